"""One WebSocket connection of the generate protocol: its requests run as asyncio tasks, multiplexed
by id, each answered with deltas and one `done` or `error`; a `subscribe` follows a background
request (at the router) with `background` messages, its final one last, and counts as in flight
meanwhile; a `cancel` or the socket closing cancels them (a subscription's cancel ends the
subscription only), which closes their upstream streams. The connection is bounded in requests in
flight, message size and idle time. What generates the text is a backend, one per component (the
transformer's TextModel, the router's edge). Keep-alive pings are uvicorn's (every 20 s, a
connection whose peer does not answer within 20 s is closed), which KServe does not let us set.

On SIGTERM the server's OpenSessions drain: no connection takes a new request, each finishes
what it has in flight and then closes with 1012 (service restart: reconnect, to another replica).
Left to uvicorn, every connection would be closed with 1012 at once, its requests lost."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol, runtime_checkable

from fastapi import FastAPI, WebSocket, WebSocketDisconnect, status
from starlette.websockets import WebSocketDisconnected

from serving import tracing
from serving.errors import InternalError, status_of
from serving.websocket_protocol import (
    CANCELLED,
    WEBSOCKET_PATH,
    BackgroundMessage,
    CancelMessage,
    DeltaMessage,
    DoneMessage,
    ErrorCode,
    ErrorMessage,
    Finish,
    GenerateMessage,
    InvalidMessage,
    RequestFailed,
    SubscribeMessage,
    TextDelta,
    as_json,
    parse_client_message,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 32
DEFAULT_IDLE_TIMEOUT_SECONDS = 300.0
IDLE_CLOSE_REASON = "idle timeout"
SHUTDOWN_CLOSE_REASON = "the server is shutting down: reconnect"
SHUTDOWN_REFUSAL = "the server is shutting down and takes no new requests: send it on a new connection"
# Browsers cannot set headers on a WebSocket handshake, only offer subprotocols: a key may come as
# the subprotocol "bearer.<key>" instead of 'Authorization: Bearer <key>'.
KEY_SUBPROTOCOL_PREFIX = "bearer."
UNAUTHORIZED_REASON = (
    f"a valid API key is required: send it as 'Authorization: Bearer <key>', or from a browser as the "
    f"subprotocol '{KEY_SUBPROTOCOL_PREFIX}<key>'"
)
# Whether a connection whose handshake has this Authorization header (None: none) may proceed.
Authorizer = Callable[[str | None], bool]


class GenerationBackend(Protocol):
    def stream(self, request: GenerateMessage, headers: Mapping[str, str]) -> AsyncIterator[TextDelta | Finish]:
        """The request's text as it is generated, then one Finish. An exception ends the request
        with an error message (its status decides the code). Closing the iterator early must stop
        the generation upstream (it is how cancel and disconnects take effect)."""


@runtime_checkable
class BackgroundSubscriptions(Protocol):
    """A backend that also serves `subscribe` (the router's: it has background requests)."""

    def follow(self, request_id: str, headers: Mapping[str, str]) -> AsyncIterator[BackgroundMessage]:
        """The background request's status now and at each change, ending with the message that
        `ends`. An exception ends the subscription with an error message, as in `stream`."""


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_message_bytes: int
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS


def add_websocket_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(f"WebSocket ({WEBSOCKET_PATH}; messages are bounded by --max_body_bytes)")
    group.add_argument("--ws_max_in_flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                       help="requests one connection may have in flight; more are answered too_many_requests")
    group.add_argument("--ws_idle_timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_SECONDS,
                       help="seconds a connection with nothing in flight may stay silent before it is closed")


def check_websocket_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.ws_max_in_flight < 1:
        parser.error("--ws_max_in_flight must be >= 1")
    if not args.ws_idle_timeout > 0:
        parser.error("--ws_idle_timeout must be > 0")


def session_limits(args: argparse.Namespace) -> SessionLimits:
    return SessionLimits(args.max_body_bytes, args.ws_max_in_flight, args.ws_idle_timeout)


class OpenSessions:
    """A server's open WebSocket sessions, which SIGTERM drains (serving/shutdown.py)."""

    def __init__(self) -> None:
        self.sessions: set[WebSocketSession] = set()
        self.draining = False

    def add(self, session: WebSocketSession) -> None:
        self.sessions.add(session)
        if self.draining:
            session.drain()

    def discard(self, session: WebSocketSession) -> None:
        self.sessions.discard(session)

    def start_draining(self) -> None:
        """From now on no session takes a new request, and each closes once it has none in flight;
        a connection opened from now on is closed at once. Call it on the server's event loop."""
        self.draining = True
        for session in list(self.sessions):
            session.drain()

    async def drained(self) -> None:
        """Returns once every open session has ended its requests and sent its close."""
        while pending := [session.drained.wait() for session in self.sessions if not session.drained.is_set()]:
            await asyncio.gather(*pending)


def add_websocket_route(app: FastAPI, backend: GenerationBackend, limits: SessionLimits,
                        authorize: Authorizer | None = None) -> OpenSessions:
    """Serve the protocol at WEBSOCKET_PATH; with `authorize`, a connection whose handshake it
    refuses is closed with 1008 (policy violation) before any message is read. Returns the
    route's open sessions, for drain_on_signal."""
    open_sessions = OpenSessions()

    @app.websocket(WEBSOCKET_PATH)
    async def generate(websocket: WebSocket) -> None:
        authorization, subprotocol = handshake_credentials(websocket.headers)
        if authorize is None or authorize(authorization):
            session = WebSocketSession(websocket, backend, limits, authorization, subprotocol)
            open_sessions.add(session)
            try:
                await session.run()
            finally:
                open_sessions.discard(session)
            return
        # Accepted first: a refused handshake reaches clients as a bare HTTP 403, without a reason.
        await websocket.accept(subprotocol)
        await websocket.close(status.WS_1008_POLICY_VIOLATION, UNAUTHORIZED_REASON)

    return open_sessions


def handshake_credentials(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(the Authorization the handshake carries, the subprotocol to accept). A key offered as a
    subprotocol counts only without an Authorization header, and that subprotocol is accepted:
    a browser fails a handshake that offered subprotocols and had none accepted."""
    authorization = headers.get("authorization")
    offered = [protocol.strip() for protocol in headers.get("sec-websocket-protocol", "").split(",")]
    key_protocol = next((protocol for protocol in offered if protocol.startswith(KEY_SUBPROTOCOL_PREFIX)), None)
    if key_protocol is None:
        return authorization, None
    if authorization is None:
        authorization = f"Bearer {key_protocol.removeprefix(KEY_SUBPROTOCOL_PREFIX)}"
    return authorization, key_protocol


class WebSocketSession:
    def __init__(
        self,
        websocket: WebSocket,
        backend: GenerationBackend,
        limits: SessionLimits,
        authorization: str | None = None,
        subprotocol: str | None = None,
    ) -> None:
        self.websocket = websocket
        self.backend = backend
        self.limits = limits
        self.subprotocol = subprotocol
        # The handshake's headers (authorization, tracing) go upstream with every request; a key
        # that came as a subprotocol goes as the Authorization header it stands for.
        self.headers = {name: value for name, value in websocket.headers.items() if name != "sec-websocket-protocol"}
        if authorization is not None:
            self.headers["authorization"] = authorization
        self.in_flight: dict[str, asyncio.Task] = {}
        # Every request's task until it returns, cancelled ones included, to be awaited at the end.
        self.tasks: set[asyncio.Task] = set()
        self.last_activity = time.monotonic()
        # Draining (SIGTERM): no new requests; closed with 1012 once nothing is in flight, when
        # `drained` is set (also set when the connection ends otherwise).
        self.draining = False
        self.drained = asyncio.Event()
        self._shutdown_close: asyncio.Task | None = None
        self._accepted = False

    async def run(self) -> None:
        await self.websocket.accept(self.subprotocol)
        self._accepted = True
        try:
            self._close_if_drained()
            while (raw := await self._next_message()) is not None:
                await self._handle(raw)
        finally:
            await self._cancel_all()
            self.drained.set()

    def drain(self) -> None:
        """Take no new request; close the connection once the requests in flight have ended."""
        self.draining = True
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.draining and self._accepted and not self.in_flight and self._shutdown_close is None:
            self._shutdown_close = asyncio.create_task(self._close_for_shutdown())

    async def _close_for_shutdown(self) -> None:
        # A request that has just left `in_flight` may still be sending its last message.
        finishing = [task for task in self.tasks if task is not asyncio.current_task()]
        await asyncio.gather(*finishing, return_exceptions=True)
        await self._close(status.WS_1012_SERVICE_RESTART, SHUTDOWN_CLOSE_REASON)
        self.drained.set()

    # Receiving ----------------------------------------------------------------------

    async def _next_message(self) -> str | bytes | None:
        """The next message, or None once the connection is over (closed by the client, idle, or
        closed here for a message over the size limit)."""
        while True:
            timeout = self.limits.idle_timeout_seconds if self.in_flight else self._idle_time_left()
            if timeout <= 0:
                await self._close(status.WS_1000_NORMAL_CLOSURE, IDLE_CLOSE_REASON)
                return None
            try:
                event = await asyncio.wait_for(self.websocket.receive(), timeout)
            except TimeoutError:
                continue
            if event["type"] == "websocket.disconnect":
                return None
            self.last_activity = time.monotonic()
            raw = event["text"] if event.get("text") is not None else event.get("bytes", b"")
            if _size(raw) > self.limits.max_message_bytes:
                await self._close(status.WS_1009_MESSAGE_TOO_BIG,
                                  f"a message may have at most {self.limits.max_message_bytes} bytes")
                return None
            return raw

    def _idle_time_left(self) -> float:
        return self.last_activity + self.limits.idle_timeout_seconds - time.monotonic()

    async def _handle(self, raw: str | bytes) -> None:
        try:
            message = parse_client_message(raw)
        except InvalidMessage as invalid:
            await self._send(ErrorMessage(id=invalid.request_id, code=ErrorCode.INVALID_REQUEST,
                                          message=invalid.message))
            return
        if isinstance(message, CancelMessage):
            await self._cancel(message.id)
        elif isinstance(message, SubscribeMessage):
            await self._start(message.id, lambda: self._follow(message))
        else:
            await self._start(message.id, lambda: self._serve(message))

    # Requests -----------------------------------------------------------------------

    async def _start(self, request_id: str, serve: Callable[[], Coroutine[None, None, None]]) -> None:
        """Run `serve()` as the request `request_id` (a generation, or a subscription: both count
        as in flight) unless the connection cannot take it."""
        if self.draining:
            await self._send(ErrorMessage.of_status(request_id, HTTPStatus.SERVICE_UNAVAILABLE, SHUTDOWN_REFUSAL))
        elif request_id in self.in_flight:
            await self._send(ErrorMessage(
                id=request_id, code=ErrorCode.DUPLICATE_ID,
                message=f"a request with id {request_id!r} is already in flight (it goes on); "
                        "ids must be unique among in-flight requests"))
        elif len(self.in_flight) >= self.limits.max_in_flight:
            await self._send(ErrorMessage(
                id=request_id, code=ErrorCode.TOO_MANY_REQUESTS,
                message=f"this connection already has {len(self.in_flight)} requests in flight, its limit; "
                        "wait for one to finish"))
        else:
            task = asyncio.create_task(serve())
            self.in_flight[request_id] = task
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _serve(self, request: GenerateMessage) -> None:
        if not tracing.ENABLED:
            await self._serve_untraced(request)
            return
        # A span per request (the connection carries many), the child of the handshake's traceparent.
        with tracing.server_span("websocket generate", self.headers, {"websocket.request_id": request.id}):
            await self._serve_untraced(request)

    async def _serve_untraced(self, request: GenerateMessage) -> None:
        try:
            end = await self._stream(request)
        except Exception as exc:
            end = error_message(request.id, exc)
        await self._end(request.id, end)

    async def _stream(self, request: GenerateMessage) -> DoneMessage:
        """Send the request's deltas; returns its `done`."""
        async with aclosing(self.backend.stream(request, self.headers)) as events:
            async for event in events:
                if isinstance(event, Finish):
                    return event.message(request.id)
                await self._send(event.message(request.id))
        raise RuntimeError("the generation backend's stream ended without a Finish")

    async def _follow(self, subscription: SubscribeMessage) -> None:
        """Send a background request's status changes; the final one ends the subscription."""
        try:
            end = await self._updates(subscription)
        except Exception as exc:
            end = error_message(subscription.id, exc)
        await self._end(subscription.id, end)

    async def _updates(self, subscription: SubscribeMessage) -> BackgroundMessage:
        """Send the updates before the final one; returns the final one."""
        if not isinstance(self.backend, BackgroundSubscriptions):
            raise RequestFailed(HTTPStatus.BAD_REQUEST, "this server has no background requests to subscribe to: "
                                                        "the router's WebSocket API serves `subscribe`")
        async with aclosing(self.backend.follow(subscription.id, self.headers)) as updates:
            async for update in updates:
                if update.ends:
                    return update
                await self._send(update)
        raise RuntimeError("the background subscription ended without a final status")

    async def _end(self, request_id: str, message: DoneMessage | ErrorMessage | BackgroundMessage) -> None:
        """Send a request's last message, unless a cancel has ended it already: whichever takes
        the request out of `in_flight` first sends its end, so there is exactly one."""
        if self.in_flight.get(request_id) is not asyncio.current_task():
            return
        del self.in_flight[request_id]
        self.last_activity = time.monotonic()
        await self._send(message)
        self._close_if_drained()

    async def _cancel(self, request_id: str) -> None:
        """Cancel a request in flight; its `done` says so. A cancel for an id not in flight (one
        that has just finished, say) is ignored: the request's own end has been sent already."""
        task = self.in_flight.pop(request_id, None)
        if task is None:
            return
        task.cancel()
        self.last_activity = time.monotonic()
        await self._send(DoneMessage(id=request_id, finish_reason=CANCELLED))
        self._close_if_drained()

    async def _cancel_all(self) -> None:
        """Cancel what is in flight and wait, so that every upstream stream is closed when the
        connection's handler returns."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Sending ------------------------------------------------------------------------

    async def _send(self, message: DeltaMessage | DoneMessage | ErrorMessage | BackgroundMessage) -> None:
        try:
            await self.websocket.send_text(as_json(message))
        except (WebSocketDisconnect, WebSocketDisconnected):
            # The connection is over; the receive loop sees it and cancels what is in flight.
            pass

    async def _close(self, code: int, reason: str) -> None:
        logger.info("closing a WebSocket connection (%d): %s", code, reason)
        try:
            await self.websocket.close(code, reason)
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass


def error_message(request_id: str, exc: Exception) -> ErrorMessage:
    """A failed request's error message: the code its status maps to; an unexpected failure is
    logged and reported by its type only."""
    if isinstance(exc, RequestFailed):
        return ErrorMessage.of_status(request_id, exc.status, exc.message, exc.retry_after_seconds)
    status_code = status_of(exc)
    if status_code == HTTPStatus.INTERNAL_SERVER_ERROR and not isinstance(exc, InternalError):
        logger.error("internal error in WebSocket request %r", request_id, exc_info=exc)
        return ErrorMessage.of_status(request_id, status_code, str(InternalError(exc)))
    logger.warning("WebSocket request %r: %d: %s", request_id, status_code, exc)
    return ErrorMessage.of_status(request_id, status_code, str(exc))


def _size(raw: str | bytes) -> int:
    return len(raw.encode()) if isinstance(raw, str) else len(raw)
