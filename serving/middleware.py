"""ASGI middleware of every component: request bodies bounded in size (413), handlers cancelled when
their client disconnects, a Retry-After header on every 503 (KServe's own ones included), and
JSON assumed for v2 infer requests that name no content type."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from fastapi import FastAPI
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import RETRY_AFTER_SECONDS, InternalError, PayloadTooLarge, error_response

logger = logging.getLogger(__name__)

_DISCONNECT: Message = {"type": "http.disconnect"}
INFERENCE_HEADER_CONTENT_LENGTH = INFERENCE_CONTENT_LENGTH_HEADER.encode()
# A body over the limit is still read (and dropped) for this long, so that its client gets the 413
# (see ClientConnectionMiddleware._refuse).
DRAIN_SECONDS = 2.0


class ClientConnectionMiddleware:
    """Reads the request body within `max_body_bytes` (413 past it, by Content-Length when the
    client sends one, by counting otherwise), then runs the app while watching the connection:
    when the client leaves, the app's handler is cancelled. That aborts the engine request
    wherever it is (queued, generating, streaming) and frees its KV blocks, on KServe's routes
    as well as ours. The app still sees the disconnect on `receive`, as Starlette expects.

    `path_bounds` gives a few exact paths a bound of their own (a file upload is larger than any
    request), without loosening the others'; `allow_larger_body` adds one to an app."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, path_bounds: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path_bounds = dict(path_bounds or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bound = self.path_bounds.get(scope["path"], self.max_body_bytes)
        if _declared_length(scope) > bound:
            await self._refuse(scope, receive, send, bound)
            return
        body = await self._read_body(receive, bound)
        if body is None:
            await self._refuse(scope, receive, send, bound)
            return
        await self._run_until_disconnect(scope, body, receive, send)

    @staticmethod
    async def _read_body(receive: Receive, bound: int) -> Message | None:
        """The whole body as one message (or the disconnect that cut it short); None if too large."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > bound:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    async def _run_until_disconnect(self, scope: Scope, body: Message, receive: Receive, send: Send) -> None:
        """Run the app in this task while a watcher task waits for the client to leave, and then
        cancels this task (one task per request, not two: this is on every request's path)."""
        disconnected = asyncio.Event()
        pending = [body]
        response_started = response_complete = client_left = False
        this_task = asyncio.current_task()

        async def app_receive() -> Message:
            if pending:
                return pending.pop()
            await disconnected.wait()
            return _DISCONNECT

        async def app_send(message: Message) -> None:
            nonlocal response_started, response_complete
            response_started = True
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_complete = True
            await send(message)

        async def watch_connection() -> None:
            nonlocal client_left
            # uvicorn answers http.disconnect once the client is gone or the response is sent.
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
            if not response_complete:
                client_left = True
                this_task.cancel()

        if body["type"] == "http.disconnect":
            disconnected.set()
        watcher = asyncio.create_task(watch_connection())
        try:
            await self.app(scope, app_receive, app_send)
        except asyncio.CancelledError:
            if not client_left:
                raise
            this_task.uncancel()
        except Exception as exc:
            await self._internal_error(scope, exc, response_started, send)
        finally:
            watcher.cancel()

    @staticmethod
    async def _internal_error(scope: Scope, exc: BaseException, response_started: bool, send: Send) -> None:
        """An unexpected failure: logged with its stack trace, answered as a 500 that names only
        its type (KServe's own handler would put the exception's text, internals included, in the
        body). If the response has already started, the connection is dropped instead."""
        if response_started:
            raise exc
        logger.error("internal error on %s", scope.get("path", ""), exc_info=exc)
        response = error_response(InternalError(exc), scope.get("path", ""))
        await response(scope, _no_receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, bound: int) -> None:
        """413, once the rest of the body has been read and dropped: an HTTP/1.1 client sends its
        whole body before it reads the answer, and a connection closed on unread bytes is reset,
        which loses the 413 on its way (the graph runner's client, and asyncio clients generally,
        then see a read error where the 413 should be). A client still sending after
        DRAIN_SECONDS is not waited for: its connection is closed."""
        response = error_response(PayloadTooLarge(bound), scope.get("path", ""))
        if not await _drain_body(receive):
            response.headers["connection"] = "close"
        await response(scope, receive, send)


def allow_larger_body(app: FastAPI, path: str, max_body_bytes: int) -> None:
    """Let requests to exactly `path` carry bodies up to `max_body_bytes` (the app's
    ClientConnectionMiddleware, installed by serving.server.install_http_layers, keeps its bound
    for every other path). Call before the server starts."""
    layer = next(middleware for middleware in app.user_middleware if middleware.cls is ClientConnectionMiddleware)
    layer.kwargs["path_bounds"] = {**layer.kwargs.get("path_bounds", {}), path: max_body_bytes}


async def _drain_body(receive: Receive) -> bool:
    """Reads and drops what is left of a request body; whether it ended within DRAIN_SECONDS."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return False
                if not message.get("more_body", False):
                    return True
    except TimeoutError:
        return False


async def _no_receive() -> Message:
    return _DISCONNECT


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class RetryAfterMiddleware:
    """Adds Retry-After to every 503 that lacks one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


class DefaultJSONContentTypeMiddleware:
    """Marks a v2 infer request without Content-Type as JSON. Clients such as tritonclient send
    none; FastAPI then hands KServe the raw bytes, which it takes for binary tensors and refuses
    for lack of an Inference-Header-Content-Length. Requests that carry that header are binary
    and pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_v2_infer(scope):
            names = {name for name, _ in scope["headers"]}
            if b"content-type" not in names and INFERENCE_HEADER_CONTENT_LENGTH not in names:
                scope = {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def _is_v2_infer(scope: Scope) -> bool:
    return scope["method"] == "POST" and scope["path"].startswith("/v2/models/") and scope["path"].endswith("/infer")
