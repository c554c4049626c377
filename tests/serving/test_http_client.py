"""serving/http_client.py against a scripted asyncio server on 127.0.0.1: bodies by length, chunked
and until the connection closes; kept-alive connections reused; a half-read response closing
its connection (what tells our predictor the client left); and each failure typed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from serving.http_client import ConnectionPool, Pools, UpstreamDisconnected, UpstreamUnreachable
from tests.serving.ports import free_port_block

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    """Answers each request on a connection with `handler`; records the requests it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed_by_client = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                self.requests.append(head + await reader.readexactly(length))
                await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        finally:
            writer.close()


async def _run(handler: Handler, test: Callable[[ConnectionPool, ScriptedServer], Awaitable[None]],
               read_timeout: float = 5.0) -> ScriptedServer:
    scripted = ScriptedServer(handler)
    server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool("127.0.0.1", port, connect_timeout=2.0, read_timeout=read_timeout)
    try:
        await test(pool, scripted)
    finally:
        await pool.close()
        server.close()
    return scripted


async def _json_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")
    await writer.drain()


async def _chunked_events(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    for event in (b"data: 1\n\n", b"data: 2\n", b"\ndata: 3\n\n"):
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def test_a_body_by_length_is_read_and_the_connection_reused():
    async def test(pool: ConnectionPool, server: ScriptedServer) -> None:
        for _ in range(3):
            async with await pool.request("POST", "/v2/x", b'{"a":1}', {"x-request-id": "abc"}) as response:
                assert response.status == 200
                assert response.headers["content-type"] == "application/json"
                assert await response.read() == b'{"ok":true}'
        assert server.connections == 1

    server = asyncio.run(_run(_json_answer, test))
    first = server.requests[0]
    assert first.startswith(b"POST /v2/x HTTP/1.1\r\n")
    assert b"\r\nx-request-id: abc\r\n" in first and b"\r\ncontent-length: 7\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a":1}')


def test_a_chunked_body_comes_line_by_line_across_chunk_boundaries():
    async def test(pool: ConnectionPool, server: ScriptedServer) -> None:
        async with await pool.request("POST", "/s", b"{}") as response:
            lines = [line async for line in response.lines()]
        assert lines == [b"data: 1", b"", b"data: 2", b"", b"data: 3", b""]
        async with await pool.request("POST", "/s", b"{}") as response:
            assert b"data: 3" in await response.read()
        assert server.connections == 1

    asyncio.run(_run(_chunked_events, test))


def test_a_body_without_length_ends_with_the_connection():
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def test(pool: ConnectionPool, server: ScriptedServer) -> None:
        async with await pool.request("GET", "/") as response:
            assert await response.read() == b"all of it"

    asyncio.run(_run(until_close, test))


def test_leaving_a_response_half_read_closes_its_connection():
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"9\r\ndata: x\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async def test(pool: ConnectionPool, server: ScriptedServer) -> None:
        async with await pool.request("POST", "/s", b"{}") as response:
            async for line in response.lines():
                if line:
                    break
        await asyncio.wait_for(server.closed_by_client.wait(), 5)
        # The next request needs, and gets, a new connection.
        async with await pool.request("POST", "/s", b"{}") as response:
            assert response.status == 200
        assert server.connections == 2

    asyncio.run(_run(endless, test))


def test_a_refused_connection_is_unreachable():
    async def test() -> None:
        pool = ConnectionPool("127.0.0.1", free_port_block(1), connect_timeout=2.0, read_timeout=2.0)
        with pytest.raises(UpstreamUnreachable, match="cannot connect"):
            await pool.request("POST", "/", b"{}")

    asyncio.run(test())


def test_a_connection_dropped_mid_body_is_a_disconnect():
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    async def test(pool: ConnectionPool, server: ScriptedServer) -> None:
        async with await pool.request("POST", "/", b"{}") as response:
            with pytest.raises(UpstreamDisconnected):
                await response.read()

    asyncio.run(_run(drop, test))


def test_a_connection_dropped_before_the_answer_is_a_disconnect():
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async def test(pool: ConnectionPool, server: ScriptedServer) -> None:
        with pytest.raises(UpstreamDisconnected):
            await pool.request("POST", "/", b"{}")

    asyncio.run(_run(drop, test))


def test_a_kept_alive_connection_the_server_closed_is_replaced():
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _json_answer(reader, writer)
        writer.transport.abort()

    async def test(pool: ConnectionPool, server: ScriptedServer) -> None:
        for _ in range(2):
            async with await pool.request("POST", "/", b"{}") as response:
                assert await response.read() == b'{"ok":true}'
        assert server.connections == 2

    asyncio.run(_run(answer_then_close, test))


def test_silence_past_the_read_timeout_is_a_timeout():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async def test(pool: ConnectionPool, server: ScriptedServer) -> None:
        with pytest.raises(TimeoutError):
            await pool.request("POST", "/", b"{}")

    asyncio.run(_run(silent, test, read_timeout=0.2))


def test_a_malformed_response_is_a_disconnect():
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def test(pool: ConnectionPool, server: ScriptedServer) -> None:
        with pytest.raises(UpstreamDisconnected, match="malformed"):
            await pool.request("POST", "/", b"{}")

    asyncio.run(_run(garbage, test))


def test_a_header_value_with_a_line_break_is_refused():
    async def test(pool: ConnectionPool, server: ScriptedServer) -> None:
        with pytest.raises(ValueError, match="not a valid HTTP header"):
            await pool.request("POST", "/", b"{}", {"x-request-id": "a\r\nx-injected: 1"})

    asyncio.run(_run(_json_answer, test))


def test_pools_keep_a_pool_per_server_and_pass_the_path_on():
    async def test() -> None:
        servers = [ScriptedServer(_json_answer) for _ in range(2)]
        started = [await asyncio.start_server(each.serve, "127.0.0.1", 0) for each in servers]
        pools = Pools(connect_timeout=2.0, read_timeout=5.0)
        try:
            for _ in range(2):
                for server in started:
                    port = server.sockets[0].getsockname()[1]
                    async with await pools.request("POST", f"http://127.0.0.1:{port}/prefix/x?a=1", b"{}") as response:
                        assert await response.read() == b'{"ok":true}'
            assert [each.connections for each in servers] == [1, 1]
            assert all(each.requests[0].startswith(b"POST /prefix/x?a=1 HTTP/1.1\r\n") for each in servers)
            with pytest.raises(ValueError, match="not an http"):
                await pools.request("POST", "ftp://127.0.0.1/x")
        finally:
            await pools.close()
            for server in started:
                server.close()

    asyncio.run(test())
