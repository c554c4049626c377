"""What one client connection may hold, and for how long: the request head must arrive within
--header_timeout of its first byte and be at most --max_header_bytes (408 or 431, and the
connection closed, otherwise), a body must make progress every --body_timeout seconds (408), a
client that stops reading what it is sent is dropped after --send_timeout (its requests
cancelled, as when it disconnects), a connection that sends nothing is closed after the
keep-alive timeout, and past --max_connections open ones a new connection gets 503 at once.
uvicorn has none of these but the keep-alive timeout (and that only after a first response), so
a client that trickled its headers, sent endless ones, sat on a new socket or never read its
stream held its connection (and its engine request) forever.

KServe builds its uvicorn Config itself, so these live in the protocol classes, registered as
uvicorn's defaults (HTTP on top of the head coalescing of http_protocol.py; WebSocket)."""

from __future__ import annotations

import argparse
import enum
import json
import logging
import math
import resource
import socket
import struct
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn import config as uvicorn_config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from serving.errors import RETRY_AFTER_SECONDS, is_openai_path
from serving.http_protocol import HeadCoalescingProtocol
from serving.openai_protocol import openai_error_body

logger = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_HEADER_BYTES = 64 << 10
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
DEFAULT_SEND_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_CONNECTIONS = 4096
# SO_LINGER on, for 0 seconds: close() resets the connection and drops unsent data.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
# File descriptors the process needs besides its clients' connections: checkpoint files,
# upstream connections, the gRPC server, logs.
OPEN_FILES_HEADROOM = 256


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float
    max_header_bytes: int
    body_timeout: float
    send_timeout: float
    max_connections: int
    # A WebSocket message's largest size: past it the connection is closed with 1009 while the
    # message is still arriving, rather than once uvicorn has buffered up to 16 MiB of it.
    max_message_bytes: int

    def describe(self) -> str:
        return (f"header_timeout={self.header_timeout:g}s max_header_bytes={self.max_header_bytes} "
                f"body_timeout={self.body_timeout:g}s send_timeout={self.send_timeout:g}s "
                f"max_connections={self.max_connections}")


def add_connection_limit_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument("--header_timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_SECONDS,
                       help="seconds a request's line and headers may take to arrive, from their first byte; "
                            "slower ones get 408 and the connection is closed")
    group.add_argument("--max_header_bytes", type=int, default=DEFAULT_MAX_HEADER_BYTES,
                       help="largest request line and headers together; larger ones get 431 and the connection "
                            "is closed")
    group.add_argument("--body_timeout", type=float, default=DEFAULT_BODY_TIMEOUT_SECONDS,
                       help="seconds a request body may go without a byte arriving; then 408, the connection "
                            "is closed and the request cancelled")
    group.add_argument("--send_timeout", type=float, default=DEFAULT_SEND_TIMEOUT_SECONDS,
                       help="seconds a client (HTTP or WebSocket) may leave more than 64 KiB of what it is "
                            "sent unread; then the connection is dropped and its requests cancelled")
    group.add_argument("--max_connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                       help="open client connections (HTTP and WebSocket); past it a new connection gets "
                            "503 with Retry-After and is closed")


def check_connection_limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag in ("header_timeout", "body_timeout", "send_timeout"):
        seconds = getattr(args, flag)
        if not (math.isfinite(seconds) and seconds > 0):
            parser.error(f"--{flag} must be a finite number of seconds > 0, not {seconds:g}")
    for flag in ("max_header_bytes", "max_connections"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    return ConnectionLimits(args.header_timeout, args.max_header_bytes, args.body_timeout, args.send_timeout,
                            args.max_connections, args.max_body_bytes)


def use_connection_limits(limits: ConnectionLimits) -> None:
    """Make the protocols below uvicorn's defaults ('auto', and their implementations' names),
    bounded by `limits`, and let the process open enough files for them."""
    _BoundedConnection.limits = limits
    http_protocol = f"{__name__}:{BoundedHttpProtocol.__name__}"
    uvicorn_config.HTTP_PROTOCOLS["auto"] = http_protocol
    uvicorn_config.HTTP_PROTOCOLS["httptools"] = http_protocol
    websocket_protocol = f"{__name__}:{BoundedWebSocketProtocol.__name__}"
    uvicorn_config.WS_PROTOCOLS["auto"] = websocket_protocol
    uvicorn_config.WS_PROTOCOLS["websockets-sansio"] = websocket_protocol
    raise_open_files_limit(limits.max_connections + OPEN_FILES_HEADROOM)


def raise_open_files_limit(wanted: int) -> None:
    """Raise the soft limit on open files to `wanted` where the hard limit allows (Go's runtime
    does as much): below it, connections past the limit fail in accept(), which stops the
    server from accepting anything for a second, instead of getting their 503."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < wanted:
        logger.warning("--max_connections needs about %d open files, but the hard limit is %d (ulimit -Hn): "
                       "lower --max_connections or raise the limit", wanted, hard)


class _BoundedConnection:
    """What the HTTP and WebSocket protocols share: the process's limits, and dropping a
    connection whose client has left more than the transport's high-water mark (64 KiB) unread
    for `send_timeout`. Without that, the request's sends wait forever for room, and even
    closing the connection waits for the buffer to drain."""

    limits: ClassVar[ConnectionLimits]
    # Attributes of the uvicorn protocol this is mixed into.
    loop: Any
    transport: Any
    logger: logging.Logger
    client: tuple[str, int] | None
    _send_stalled: TimerHandle | None = None

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        self._send_stalled = self.loop.call_later(self.limits.send_timeout, self._drop_stalled_reader)

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._stop_send_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_send_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _stop_send_timer(self) -> None:
        if self._send_stalled is not None:
            self._send_stalled.cancel()
            self._send_stalled = None

    def _drop_stalled_reader(self) -> None:
        self._send_stalled = None
        self.logger.info("%s - dropped: what it was sent stayed unread for %g s (--send_timeout)",
                         _address(self.client), self.limits.send_timeout)
        # A reset: closed plainly, the socket would go on holding what the kernel has buffered for
        # the client (megabytes) until it reads, and the client would take a cut-off answer for a
        # whole one. abort(), not close(): close() would wait for the client to read ours first.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        self.transport.abort()


class _Reading(enum.Enum):
    NOTHING = enum.auto()  # no request under way, or the request is in and the app answers it
    HEAD = enum.auto()
    BODY = enum.auto()


class BoundedHttpProtocol(_BoundedConnection, HeadCoalescingProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading = _Reading.NOTHING
        # When the head's first byte came, or the body's latest bytes.
        self._reading_since = 0.0
        self._read_deadline: TimerHandle | None = None
        self._head_bytes = 0
        self._requests_read = 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse_over_capacity()
            return
        # uvicorn arms its keep-alive timer only after a response: a connection that never sends a
        # byte would be held for good.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Bytes between requests start a head even if they are only blank lines: otherwise a
        # client could stop uvicorn's keep-alive timer with one CRLF and then hold the connection.
        if self._reading is _Reading.NOTHING:
            self._start_reading(_Reading.HEAD)
        elif self._reading is _Reading.BODY:
            self._reading_since = self.loop.time()
        requests_read = self._requests_read
        super().data_received(data)
        if self._reading is _Reading.HEAD and self._requests_read == requests_read:
            # Counted here, before the parser gets more: httptools has no limit, and collects a
            # long header at a cost that grows with the square of its length. Only reads that
            # end inside a head count, whole (a head that began after another request ended in
            # the same read is not charged for that request): a head may get one read (256 KiB
            # at most) past the limit, and no legitimate one is refused.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse_head(431, f"the request's line and headers are larger than "
                                       f"{self.limits.max_header_bytes} bytes", "--max_header_bytes")
        self._watch_read_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A request pipelined behind one that ended in the same bytes.
        if self._reading is _Reading.NOTHING:
            self._start_reading(_Reading.HEAD)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            self._reading = _Reading.NOTHING  # the WebSocket protocol takes the connection over
        else:
            self._start_reading(_Reading.BODY)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading = _Reading.NOTHING
        self._requests_read += 1

    def _start_reading(self, part: _Reading) -> None:
        self._reading = part
        self._reading_since = self.loop.time()
        self._head_bytes = 0

    def _watch_read_deadline(self) -> None:
        """One timer while a request is incomplete, armed only then: a request that arrives whole
        in one read (most of them) costs no timer."""
        if self._reading is _Reading.NOTHING:
            self._stop_read_deadline()
        elif self._read_deadline is None:
            self._read_deadline = self.loop.call_at(self._deadline(), self._on_read_deadline)

    def _deadline(self) -> float:
        timeout = self.limits.header_timeout if self._reading is _Reading.HEAD else self.limits.body_timeout
        return self._reading_since + timeout

    def _stop_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _on_read_deadline(self) -> None:
        self._read_deadline = None
        if self._reading is _Reading.BODY and self.flow.read_paused:
            # uvicorn stopped reading until the app takes what came: the wait is not the client's.
            self._reading_since = self.loop.time()
        if self.loop.time() < self._deadline():
            self._watch_read_deadline()
        elif self._reading is _Reading.HEAD:
            self._refuse_head(408, f"the request's line and headers did not arrive within "
                                   f"{self.limits.header_timeout:g} s", "--header_timeout")
        else:
            self._body_too_slow()

    def _refuse_head(self, status: int, message: str, flag: str) -> None:
        self.logger.info("%s - %d: %s (%s)", _address(self.client), status, message, flag)
        self._reading = _Reading.NOTHING
        if self.cycle is not None and not self.cycle.response_complete:
            # Pipelined behind a response still going out: read no more, close once it is sent.
            self.flow.pause_reading()
            self.cycle.keep_alive = False
            return
        self._answer_and_close(status, message)

    def _body_too_slow(self) -> None:
        cycle = self.cycle
        # To the app the client has left: ClientConnectionMiddleware cancels its handler.
        cycle.disconnected = True
        cycle.message_event.set()
        message = f"the request body stalled: no byte came for {self.limits.body_timeout:g} s"
        self.logger.info("%s - 408: %s (--body_timeout)", _address(self.client), message)
        if cycle.response_started:
            self.transport.close()
            return
        self._answer_and_close(408, message, self.scope.get("path", ""))

    def _refuse_over_capacity(self) -> None:
        self.logger.warning("%s - 503: %d connections are open already (--max_connections)",
                            _address(self.client), self.limits.max_connections)
        self._answer_and_close(503, "the server has too many open connections: retry later",
                               extra_headers=[(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])

    def _answer_and_close(self, status: int, message: str, path: str = "",
                          extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [*self.server_state.default_headers, *(extra_headers or [])]
        self.transport.write(_error_response(status, message, path, headers))
        self.transport.close()


class BoundedWebSocketProtocol(_BoundedConnection, WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The session checks each message's size too, whatever protocol serves it; this stops one
        # while it arrives.
        self.conn.max_message_size = self.limits.max_message_bytes


def _error_response(status: int, message: str, path: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole response, closing the connection; its body in the error shape of the route at
    `path` (OpenAI's or KServe's)."""
    body = json.dumps(openai_error_body(status, message) if is_openai_path(path) else {"error": message}).encode()
    lines = [STATUS_LINE[status]]
    for name, value in [*headers, (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]:
        lines += [name, b": ", value, b"\r\n"]
    return b"".join([*lines, b"\r\n", body])


def _address(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"
