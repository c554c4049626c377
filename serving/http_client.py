"""A small HTTP/1.1 client for the hops between our own components (the transformer calling its
predictor): kept-alive connections to one server, one request per connection at a time, JSON
bodies out, responses read whole or chunk by chunk as they arrive.

Why not aiohttp or httpx: on a hop that every token's first byte crosses, their generality costs
a fraction of a millisecond per request (request objects, header multidicts, tracing hooks, a
task per request body), which this does without. The parsing is httptools' (llhttp, the parser
uvicorn serves with). What it does not do: redirects, cookies, proxies, compression, HTTP/2.

Failures are typed: UpstreamUnreachable (no connection could be made: nothing was sent),
UpstreamDisconnected (the server closed or broke the connection before the response ended),
and TimeoutError (no byte within the read timeout)."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

# Reading pauses while this much of a response is received but not yet consumed.
MAX_BUFFERED_BYTES = 1 << 16
# Idle connections kept per server; past a burst, the others are closed as they come back.
MAX_IDLE_CONNECTIONS = 256


class UpstreamUnreachable(ConnectionError):
    """No connection could be made; the request was not sent."""


class UpstreamDisconnected(ConnectionError):
    """The connection closed or broke before the response was complete."""


class _Connection(asyncio.Protocol):
    """One TCP connection and the response being read on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future | None = None
        self.lost = False
        self.error: Exception | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.message_done = False
        self.keep_alive = True
        self._until_eof = False
        self.chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamDisconnected(f"malformed response ({exc})")
            self.transport.close()
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.headers_done and self._until_eof:
            self.message_done = True  # a body without a length ends with the connection
        self._wake()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self._until_eof = ("content-length" not in self.headers and "transfer-encoding" not in self.headers
                           and self.status not in (204, 304))
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > MAX_BUFFERED_BYTES and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.message_done = True
        self._wake()

    # Used by Response

    def take_chunks(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def wait(self, timeout: float) -> None:
        """Until the parser makes progress, the connection goes, or `timeout` seconds pass."""
        if self.lost or self.error is not None:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def reusable(self) -> bool:
        return self.message_done and self.keep_alive and not self.lost and self.error is None

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()


class Response:
    """A response whose head has arrived. Use as `async with`: leaving gives the connection back
    to the pool when the body was read to its end, and closes it otherwise (which tells the
    server the client has gone)."""

    def __init__(self, pool: ConnectionPool, connection: _Connection) -> None:
        self._pool = pool
        self._connection = connection
        self.status = connection.status
        self.headers = connection.headers

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if self._connection is not None:
            self._pool._release(self._connection)
            self._connection = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked transfer decoded)."""
        connection = self._connection
        while True:
            if connection.chunks:
                yield connection.take_chunks()
                continue
            if connection.message_done:
                return
            _raise_if_broken(connection)
            await connection.wait(self._pool.read_timeout)

    async def lines(self) -> AsyncIterator[bytes]:
        """The body line by line (without the line ends), as each line completes."""
        pending = b""
        async for chunk in self.chunks():
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.rstrip(b"\r")
        if pending:
            yield pending

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


class ConnectionPool:
    """Kept-alive connections to one server (host:port), made as needed and reused LIFO."""

    def __init__(self, host: str, port: int, *, connect_timeout: float, read_timeout: float,
                 ssl: ssl_module.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._ssl = ssl
        self._host_header = f"{host}:{port}".encode("latin-1")
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None) -> Response:
        """Send the request and wait for the response's head. A kept-alive connection that the
        server closed while idle (before any answer) is retried once on a new connection."""
        request = self._head(method, path, len(body), headers or {}) + body
        connection, reused = await self._acquire()
        try:
            return await self._exchange(connection, request)
        except UpstreamDisconnected:
            if not reused or connection.headers_done:
                raise
        # The server closed the idle connection as the request went out: once more, on a new one.
        return await self._exchange(await self._connect(), request)

    async def close(self) -> None:
        for connection in [*self._idle, *self._busy]:
            connection.close()
        self._idle.clear()
        self._busy.clear()

    def _head(self, method: str, path: str, length: int, headers: Mapping[str, str]) -> bytes:
        lines = [f"{method} {path} HTTP/1.1".encode("latin-1"), b"host: " + self._host_header,
                 b"content-type: application/json", b"content-length: " + str(length).encode()]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ValueError(f"header {name!r} is not a valid HTTP header")
            lines.append(f"{name}: {value}".encode("latin-1"))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _exchange(self, connection: _Connection, request: bytes) -> Response:
        self._busy.add(connection)
        try:
            connection.transport.write(request)
            while not connection.headers_done:
                _raise_if_broken(connection)
                await connection.wait(self.read_timeout)
        except BaseException:
            self._discard(connection)
            raise
        return Response(self, connection)

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self._idle:
            connection = self._idle.pop()
            if not connection.lost:
                connection._reset()
                return connection, True
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamUnreachable(f"no connection to {self.host}:{self.port} within "
                                      f"{self.connect_timeout:g} s") from None
        except OSError as exc:
            raise UpstreamUnreachable(f"cannot connect to {self.host}:{self.port} "
                                      f"({exc.strerror or type(exc).__name__})") from None
        return connection

    def _release(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        if connection.reusable and not connection.chunks and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:
            connection.close()

    def _discard(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        connection.close()


def _raise_if_broken(connection: _Connection) -> None:
    if connection.error is not None:
        raise connection.error
    if connection.lost:
        raise UpstreamDisconnected("the server closed the connection before the response ended")


class Pools:
    """A ConnectionPool per server, for a client that talks to several (the router to its
    targets' replicas), addressed by URL."""

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pools: dict[tuple[str, str, int], ConnectionPool] = {}

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None) -> Response:
        """`url`: http(s)://host[:port][/path]."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        secure = parts.scheme == "https"
        key = (parts.scheme, parts.hostname, parts.port or (443 if secure else 80))
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = ConnectionPool(
                key[1], key[2], connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                ssl=ssl_module.create_default_context() if secure else None)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return await pool.request(method, path, body, headers)

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
