"""The gateway's pipelined Redis connection: commands of one turn of the event loop leave in one
write and get their own replies back, whatever way the bytes are split; the handshake selects the
URL's db; a silent Redis fails what waits within the timeout, a slow but answering one does not;
a lost connection fails what waits and the next command connects again."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.gateway.redis_pipeline import LuaScript, PipelinedConnection, ReplyReader, encode_command
from router.gateway.redis_store import RedisStore
from tests.servers import free_port


def test_commands_are_encoded_as_redis_py_writes_them():
    assert encode_command(["SET", "k", b"\x00v", 3, 1.5]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$1\r\n3\r\n$3\r\n1.5\r\n")
    for wrong in (None, True, ["list"]):
        with pytest.raises(TypeError):
            encode_command(["SET", "k", wrong])


REPLIES = (b"+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n$0\r\n\r\n"
           b"-ERR wrong\r\n-NOSCRIPT No matching script\r\n")


def _read(chunks: list[bytes]) -> list:
    reader = ReplyReader()
    return [reply for chunk in chunks for reply in reader.feed(chunk)]


def test_replies_are_the_same_however_the_bytes_are_split():
    whole = _read([REPLIES])
    assert whole[:6] == [b"OK", 42, b"hello", None, None, [1, [b"a", None], b""]]
    assert type(whole[6]) is ResponseError and str(whole[6]) == "ERR wrong"
    assert isinstance(whole[7], NoScriptError)
    byte_by_byte = _read([REPLIES[index:index + 1] for index in range(len(REPLIES))])
    assert [repr(reply) for reply in byte_by_byte] == [repr(reply) for reply in whole]


def test_commands_of_one_turn_leave_in_one_write(redis_server, redis_prefix):
    async def scenario() -> tuple[list, list[bytes]]:
        connection = PipelinedConnection(redis_server.url, timeout_seconds=5)
        await connection.submit(["PING"])  # connected
        writes = []
        write = connection._transport.write
        connection._transport.write = lambda data: (writes.append(data), write(data))
        key = redis_prefix + "counter"
        replies = await asyncio.gather(*[connection.submit(["INCR", key]) for _ in range(50)],
                                       connection.submit(["GET", key]), connection.submit(["GET", key + ":none"]))
        await connection.close()
        return replies, writes

    replies, writes = asyncio.run(scenario())
    assert replies == [*range(1, 51), b"50", None]
    assert len(writes) == 1


def test_the_handshake_selects_the_urls_db_and_a_refused_password_fails_clearly(redis_server, redis_prefix):
    key = redis_prefix + "in-db-3"

    async def scenario(url: str) -> object:
        connection = PipelinedConnection(url, timeout_seconds=5)
        try:
            return await connection.submit(["SET", key, "here"])
        finally:
            await connection.close()

    assert asyncio.run(scenario(f"redis://127.0.0.1:{redis_server.port}/3")) == b"OK"
    assert redis.Redis(port=redis_server.port, db=3).get(key) == b"here"
    assert redis.Redis(port=redis_server.port, db=0).get(key) is None
    with pytest.raises(RedisConnectionError, match="AUTH or SELECT"):
        asyncio.run(scenario(f"redis://:wrong@127.0.0.1:{redis_server.port}/0"))


class FakeRedis:
    """A server that reads commands and answers each `+OK` after `delay` seconds, one after
    another (None: never), counting its connections; `close_all()` drops them."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self.port = free_port()

    async def start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        reader_of_replies = ReplyReader()  # a command is an array, as a reply would be
        try:
            while data := await reader.read(65536):
                for _ in reader_of_replies.feed(data):
                    if self.delay is None:
                        continue
                    await asyncio.sleep(self.delay)
                    writer.write(b"+OK\r\n")
        except ConnectionError:
            pass

    def close_all(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers.clear()


def test_a_silent_redis_fails_what_waits_and_the_next_command_connects_again():
    async def scenario() -> tuple[float, int]:
        fake = FakeRedis(delay=None)
        server = await fake.start()
        connection = PipelinedConnection(f"redis://127.0.0.1:{fake.port}/0", timeout_seconds=0.3)
        started = time.monotonic()
        results = await asyncio.gather(connection.submit(["PING"]), connection.submit(["PING"]),
                                       return_exceptions=True)
        waited = time.monotonic() - started
        assert all(isinstance(result, RedisTimeoutError) for result in results), results
        fake.delay = 0.0
        assert await connection.submit(["PING"]) == b"OK"
        await connection.close()
        server.close()
        return waited, fake.connections

    waited, connections = asyncio.run(scenario())
    assert 0.25 <= waited < 2
    assert connections == 2


def test_a_slow_redis_that_keeps_answering_is_no_timeout():
    async def scenario() -> list:
        fake = FakeRedis(delay=0.1)
        server = await fake.start()
        connection = PipelinedConnection(f"redis://127.0.0.1:{fake.port}/0", timeout_seconds=0.4)
        # Ten replies take a second in all, more than the timeout, but Redis is never silent that long.
        replies = await asyncio.gather(*[connection.submit(["PING"]) for _ in range(10)])
        await connection.close()
        server.close()
        return replies

    assert asyncio.run(scenario()) == [b"OK"] * 10


def test_a_lost_connection_fails_what_waits_and_the_next_command_connects_again():
    async def scenario() -> tuple[object, object, int]:
        fake = FakeRedis(delay=None)
        server = await fake.start()
        connection = PipelinedConnection(f"redis://127.0.0.1:{fake.port}/0", timeout_seconds=5)
        waiting = connection.submit(["PING"])
        await asyncio.sleep(0.2)
        fake.close_all()
        lost = await asyncio.gather(waiting, return_exceptions=True)
        fake.delay = 0.0
        again = await connection.submit(["PING"])
        await connection.close()
        server.close()
        return lost[0], again, fake.connections

    lost, again, connections = asyncio.run(scenario())
    assert isinstance(lost, RedisConnectionError) and "lost" in str(lost)
    assert again == b"OK" and connections == 2


def test_a_cancelled_caller_leaves_the_replies_in_step(redis_server, redis_prefix):
    async def scenario() -> tuple[object, object]:
        connection = PipelinedConnection(redis_server.url, timeout_seconds=5)
        await connection.submit(["SET", redis_prefix + "a", "A"])
        abandoned = connection.submit(["GET", redis_prefix + "a"])
        abandoned.cancel()
        kept = await connection.submit(["ECHO", "B"])
        await connection.close()
        return abandoned.cancelled(), kept

    assert asyncio.run(scenario()) == (True, b"B")


def test_a_script_redis_forgot_is_sent_again_by_its_text(redis_server, redis_prefix):
    script = LuaScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")

    async def scenario() -> list:
        store = RedisStore(redis_server.url, prefix=redis_prefix)
        try:
            first = await store.run_script("test", script, [store.key("n")], [2])
            await store.send("test", "SCRIPT", "FLUSH")
            second = await store.run_script("test", script, [store.key("n")], [3])
            third = await store.run_script("test", script, [store.key("n")], [4])
            return [first, second, third]
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [2, 5, 9]


def test_one_connection_serves_event_loops_in_turn(redis_server, redis_prefix):
    connection = PipelinedConnection(redis_server.url, timeout_seconds=5)
    key = redis_prefix + "loops"
    for expected in (1, 2):
        assert asyncio.run(_submit(connection, ["INCR", key])) == expected


async def _submit(connection: PipelinedConnection, command: list) -> object:
    return await connection.submit(command)
