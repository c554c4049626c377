"""The gateway's per-request Redis commands on one pipelined connection: the commands issued in one
turn of the event loop leave together in one write, and their replies come back in order on the
same connection (what ioredis calls auto-pipelining). A request's admission, Idempotency-Key claim
and cache lookup then cost Redis one write and one wake-up, not three, and concurrent requests
share writes instead of each taking a pooled connection: the overhead per request falls as load
rises. A command is written by `submit` itself (at the end of the current turn), so a caller that
submits and then does other work has its reply on the way meanwhile.

Only commands that answer at once belong here: a blocking one (XREADGROUP BLOCK, BLPOP) would hold
up every reply behind it. Replies are RESP2 values: bytes, int, None, lists of them; an error reply
raises ResponseError (NoScriptError for an unknown script). When Redis sends nothing for the
timeout while replies are awaited, every command waiting on the connection fails (their replies
could no longer be matched) and the next command connects again. The clock is Redis's silence,
not a command's age: replies that keep coming mean Redis is answering, however many commands a
burst queued, and a router whose event loop was busy finds the replies that arrived meanwhile
before it looks at the clock."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Reply = bytes | int | list | None
Argument = bytes | str | int | float


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script sent by its SHA1 (EVALSHA), and by its text when Redis does not know it yet."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


def encode_command(arguments: Sequence[Argument]) -> bytes:
    """A command in RESP: an array of bulk strings (numbers written as redis-py writes them)."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        if isinstance(argument, bytes):
            data = argument
        elif isinstance(argument, str):
            data = argument.encode()
        elif isinstance(argument, (int, float)) and not isinstance(argument, bool):
            data = repr(argument).encode()
        else:
            raise TypeError(f"a Redis argument is bytes, str, int or float, not {type(argument).__name__}")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


class ReplyReader:
    """RESP2 replies parsed from the bytes as they arrive."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Reply | ResponseError]:
        """The replies completed by `data`, in order (an error reply as a ResponseError)."""
        self._buffer += data
        replies, position = [], 0
        while position < len(self._buffer):
            try:
                reply, position_after = _parse(self._buffer, position)
            except _Incomplete:
                break
            replies.append(reply)
            position = position_after
        del self._buffer[:position]
        return replies


def _parse(buffer: bytearray, start: int) -> tuple[Reply | ResponseError, int]:
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        raise _Incomplete
    kind, line, after = buffer[start], bytes(buffer[start + 1:line_end]), line_end + 2
    if kind == ord("$"):
        length = int(line)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            raise _Incomplete
        return bytes(buffer[after:after + length]), after + length + 2
    if kind == ord(":"):
        return int(line), after
    if kind == ord("*"):
        length = int(line)
        if length < 0:
            return None, after
        items = []
        for _ in range(length):
            item, after = _parse(buffer, after)
            items.append(item)
        return items, after
    if kind == ord("+"):
        return line, after
    if kind == ord("-"):
        message = line.decode(errors="replace")
        return (NoScriptError if message.startswith("NOSCRIPT") else ResponseError)(message), after
    raise RedisConnectionError(f"Redis sent a reply of unknown type {chr(kind)!r}")


class _ReplyProtocol(asyncio.Protocol):
    def __init__(self, connection: PipelinedConnection) -> None:
        self._connection = connection

    def data_received(self, data: bytes) -> None:
        self._connection._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection._lost(self, exc)


class PipelinedConnection:
    """One connection to the Redis at `url` (redis://, rediss:// or unix://, with its user,
    password and db), opened on first use and again after any failure."""

    def __init__(self, url: str, timeout_seconds: float) -> None:
        options = parse_url(url)
        self._path: str | None = options.get("path")
        self._host: str = options.get("host", "localhost")
        self._port: int = options.get("port", 6379)
        self._ssl = ssl.create_default_context() if options.get("connection_class") is SSLConnection else None
        self._handshake = _handshake(options)
        self._timeout_seconds = timeout_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._protocol: _ReplyProtocol | None = None
        self._connecting: asyncio.Task | None = None
        self._reader = ReplyReader()
        self._unsent: list[bytes] = []
        # The replies expected, in the order of the commands (written or not yet); None for a
        # reply of the handshake.
        self._waiting: deque[asyncio.Future | None] = deque()
        self._unanswered = 0  # commands written whose replies have not come
        self._heard_at = 0.0  # when Redis last sent something, or was last written to while silent
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None

    def submit(self, arguments: Sequence[Argument]) -> asyncio.Future:
        """The future reply to the command, which leaves at the end of this turn of the event loop
        (or once connected)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._start_over(loop)
        future = loop.create_future()
        self._unsent.append(encode_command(arguments))
        self._waiting.append(future)
        if self._transport is None:
            if self._connecting is None:
                self._connecting = loop.create_task(self._connect())
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    async def close(self) -> None:
        if self._loop is not None and self._loop is asyncio.get_running_loop():
            self._abort(RedisConnectionError("the connection to Redis was closed"))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_seconds):
                if self._path is not None:
                    transport, protocol = await loop.create_unix_connection(lambda: _ReplyProtocol(self), self._path)
                else:
                    transport, protocol = await loop.create_connection(
                        lambda: _ReplyProtocol(self), self._host, self._port, ssl=self._ssl)
        except (OSError, TimeoutError) as exc:
            self._connecting = None
            self._abort(RedisConnectionError(f"cannot connect to Redis: {type(exc).__name__}: {exc}"))
            return
        self._connecting = None
        self._transport, self._protocol = transport, protocol
        self._unsent[:0] = self._handshake
        self._waiting.extendleft([None] * len(self._handshake))
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is None or not self._unsent:
            return
        if not self._unanswered:
            self._heard_at = self._loop.time()
        self._unanswered += len(self._unsent)
        data = b"".join(self._unsent)
        self._unsent.clear()
        self._transport.write(data)
        self._arm_watchdog()

    def _received(self, protocol: _ReplyProtocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return
        self._heard_at = self._loop.time()
        try:
            replies = self._reader.feed(data)
        except (ValueError, RedisConnectionError) as exc:
            self._abort(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
            return
        for reply in replies:
            if not self._unanswered:
                self._abort(RedisConnectionError("Redis sent a reply to no command"))
                return
            self._unanswered -= 1
            future = self._waiting.popleft()
            if future is None:
                if isinstance(reply, ResponseError):
                    self._abort(RedisConnectionError(f"Redis refused the connection's AUTH or SELECT: {reply}"))
                    return
            elif future.done():
                pass  # its caller has gone (cancelled); the reply is read all the same
            elif isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def _lost(self, protocol: _ReplyProtocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            reason = f": {exc}" if exc else ""
            self._abort(RedisConnectionError(f"the connection to Redis was lost{reason}"))

    def _arm_watchdog(self) -> None:
        """One timer while replies are awaited, not one per command."""
        if self._watchdog is None and self._unanswered:
            self._watchdog = self._loop.call_at(self._heard_at + self._timeout_seconds, self._check_silence)

    def _check_silence(self) -> None:
        self._watchdog = None
        if self._unanswered and self._loop.time() - self._heard_at >= self._timeout_seconds:
            self._abort(RedisTimeoutError(f"Redis sent nothing for {self._timeout_seconds:g} s"))
        else:
            self._arm_watchdog()

    def _abort(self, error: Exception) -> None:
        """Fail every command waiting (or not yet sent) with `error`, and drop the connection."""
        transport, self._transport, self._protocol = self._transport, None, None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self._waiting = self._waiting, deque()
        self._unsent.clear()
        self._unanswered = 0
        self._reader = ReplyReader()
        for future in waiting:
            if future is not None and not future.done():
                future.set_exception(error)
        if transport is not None:
            transport.abort()

    def _start_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """First use, or use from another event loop (the previous one's connection is left to it)."""
        self._loop = loop
        self._transport = self._protocol = self._connecting = self._watchdog = None
        self._waiting.clear()
        self._unsent.clear()
        self._unanswered = 0
        self._reader = ReplyReader()
        self._flush_scheduled = False


def _handshake(options: dict) -> list[bytes]:
    commands = []
    if options.get("password") is not None:
        user = options.get("username")
        commands.append(encode_command(["AUTH", user, options["password"]] if user else ["AUTH", options["password"]]))
    if options.get("db"):
        commands.append(encode_command(["SELECT", options["db"]]))
    return commands
