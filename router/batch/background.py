"""Single asynchronous ("background") requests on the router's OpenAI edge, in the shape of OpenAI's
background responses. A completion or chat request with `"background": true` is validated as the
online route would validate it (the same 400 now, not a failure later), queued, and answered at
once with its id; GET /openai/v1/background/{id} reads it (long-polled with `?wait=<seconds>`),
POST /openai/v1/background/{id}/cancel cancels it, and the WebSocket API's `subscribe` follows it
(router/websocket_edge.py).

Each is a batch of one line in the batch store (kind background): durable, shared by the replicas,
run by the batch worker on spare capacity, and admitted and metered to its tenant when it runs.
It has no files: its result is its one LineResult, kept for the retention period after it ends
(the Sweeper deletes it then); one not run within its completion window expires."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from http import HTTPStatus

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from kserve.errors import ModelNotFound
from pydantic import BaseModel, ValidationError
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.batch.dispatch import OPENAI_ROOT
from router.batch.finalize import Finalizer
from router.batch.metrics import BATCH_TRANSITIONS
from router.batch.objects import (
    BACKGROUND_FIELD,
    BACKGROUND_LINE_ID,
    FINAL_BACKGROUND_STATUSES,
    BackgroundStatus,
    background_object,
    completion_window_seconds,
    new_background_id,
)
from router.batch.routes import ApiError, answered, tenant_of
from router.batch.store import BatchKind, BatchRecord, BatchStatus, BatchStore
from router.batch.worker import BatchWorker
from serving.errors import check_model_name, error_response, validation_error_response
from serving.openai_protocol import ChatCompletionRequest, CompletionRequest
from serving.openai_routes import (
    BACKGROUND_PATH,
    CHAT_COMPLETIONS_PATH,
    COMPLETIONS_PATH,
)
from serving.request_bodies import off_loop_if_large

# The routes a request may be submitted to in the background, with the body model that validates it.
SUBMITTABLE: dict[str, type[BaseModel]] = {CHAT_COMPLETIONS_PATH: ChatCompletionRequest,
                                           COMPLETIONS_PATH: CompletionRequest}
# How often a long poll (?wait=) or a WebSocket subscription reads the store.
POLL_SECONDS = 0.2
MAX_WAIT_SECONDS = 60.0
DEFAULT_COMPLETION_WINDOW = "24h"


@dataclass(frozen=True, slots=True)
class BackgroundSettings:
    # The time a request has to start before it expires, as a batch's completion_window ("24h").
    completion_window: str = DEFAULT_COMPLETION_WINDOW

    def __post_init__(self) -> None:
        completion_window_seconds(self.completion_window)


class BackgroundApi:
    """The background requests' work, against the batch store; `worker` is this process's, whose
    dispatch a cancel stops when the request runs here."""

    def __init__(self, store: BatchStore, finalizer: Finalizer, worker: BatchWorker, settings: BackgroundSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.finalizer = finalizer
        self.worker = worker
        self.settings = settings
        self.clock = clock

    async def submit(self, tenant: str, endpoint: str, body: dict) -> dict:
        """Queue `body` (already validated, without its `background` field) for `endpoint`."""
        now = int(self.clock())
        window = self.settings.completion_window
        # A background request has no input file: its one line is queued with it.
        record = BatchRecord(new_background_id(), tenant, endpoint, "", window, BatchStatus.IN_PROGRESS, now,
                             now + completion_window_seconds(window), 1, kind=BatchKind.BACKGROUND,
                             model=body.get("model"))
        line = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        await self.store.add_batch(record, [(BACKGROUND_LINE_ID, line)])
        BATCH_TRANSITIONS.labels(str(record.status), str(record.kind)).inc()
        return background_object(record, None)

    async def request(self, tenant: str, request_id: str) -> BatchRecord:
        record = await self.store.batch(request_id)
        # Batches are stored alike, but are not background requests; another tenant's is unknown here.
        if record is None or record.tenant != tenant or record.kind is not BatchKind.BACKGROUND:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no background request with id {request_id!r}", "background_id",
                           "background_not_found")
        return record

    async def object(self, tenant: str, request_id: str) -> dict:
        record = await self.request(tenant, request_id)
        answered_now = record.status in (BatchStatus.COMPLETED, BatchStatus.FINALIZING)
        results = await self.store.results(record.id) if answered_now else []
        return background_object(record, results[0] if results else None)

    async def wait(self, tenant: str, request_id: str, wait_seconds: float) -> dict:
        """The object once its status is final, or as it is after `wait_seconds` (0: at once)."""
        if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"wait must be from 0 to {MAX_WAIT_SECONDS:g} seconds; got "
                           f"{wait_seconds:g}", "wait")
        deadline = time.monotonic() + wait_seconds
        while True:
            current = await self.object(tenant, request_id)
            left = deadline - time.monotonic()
            if current["status"] in FINAL_BACKGROUND_STATUSES or left <= 0:
                return current
            await asyncio.sleep(min(POLL_SECONDS, left))

    async def updates(self, tenant: str, request_id: str) -> AsyncIterator[dict]:
        """The object now and at each change of status, up to its final one."""
        last_status = None
        while True:
            current = await self.object(tenant, request_id)
            if current["status"] != last_status:
                last_status = current["status"]
                yield current
            if last_status in FINAL_BACKGROUND_STATUSES:
                return
            await asyncio.sleep(POLL_SECONDS)

    async def cancel(self, tenant: str, request_id: str) -> dict:
        """A queued request never runs; one running here has its dispatch stopped, one running on
        another replica has its answer discarded (the worker records none for a cancelled one).
        Cancelling a cancelled one answers it as it is; one that ended otherwise is a 409."""
        record = await self.request(tenant, request_id)
        if record.status is BatchStatus.IN_PROGRESS:
            await self.finalizer.end(record, BatchStatus.CANCELLED)
            self.worker.cancel_dispatch(record.id)
        current = await self.object(tenant, request_id)
        if current["status"] != BackgroundStatus.CANCELLED:
            raise ApiError(HTTPStatus.CONFLICT, f"background request {request_id!r} has ended ({current['status']}): "
                           "only a queued or in-progress one can be cancelled", "background_id")
        return current


class BackgroundSubmissions:
    """ASGI middleware in front of the completion routes (inside the gateway, which lets a
    submission through unmetered, and ahead of the routes): a body with `"background": true` is
    validated and queued here; one with `"background": false` goes on as an online request,
    without the field; any other goes on untouched."""

    def __init__(self, app: ASGIApp, api: BackgroundApi, served_models: Callable[[], Collection[str]]) -> None:
        self.app = app
        self.api = api
        self.served_models = served_models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body_model = SUBMITTABLE.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if body_model is None:
            await self.app(scope, receive, send)
            return
        # The whole body, in one message: ClientConnectionMiddleware read it, within its bound.
        message = await receive()
        body = message.get("body", b"")
        # A substring test first: this is on every completion's path, and few are background ones.
        fields = _json_object(body) if BACKGROUND_FIELD.encode() in body else None
        if fields is None or BACKGROUND_FIELD not in fields:
            await self.app(scope, _replaying(message, receive), send)
            return
        background = fields.pop(BACKGROUND_FIELD)
        if background is False:
            online = {**message, "body": json.dumps(fields).encode()}
            await self.app(scope, _replaying(online, receive), send)
            return
        response = await self._submit(scope, body_model, fields, background, len(body))
        await response(scope, receive, send)

    async def _submit(self, scope: Scope, body_model: type[BaseModel], fields: dict, background: object,
                      size: int) -> Response:
        path = scope["path"]
        if background is not True:
            return ApiError(HTTPStatus.BAD_REQUEST, f"background must be true or false; got {background!r}",
                            BACKGROUND_FIELD).response()
        if fields.get("stream") is True:
            return ApiError(HTTPStatus.BAD_REQUEST, "stream cannot be used with background: read the result by id "
                            f"(GET {BACKGROUND_PATH}/{{id}}), or subscribe to it on the WebSocket API", "stream").response()
        try:
            await off_loop_if_large(size, lambda: body_model.model_validate(fields))
            check_model_name(fields["model"], self.served_models())
        except ValidationError as exc:
            return validation_error_response(exc.errors(), path)
        except ModelNotFound as exc:
            return error_response(exc, path)
        return await answered(self.api.submit(tenant_of(scope), path.removeprefix(OPENAI_ROOT), fields))


def _json_object(body: bytes) -> dict | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _replaying(message: Message, receive: Receive) -> Receive:
    pending = [message]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def add_background_routes(app: FastAPI, api: BackgroundApi, served_models: Callable[[], Collection[str]]) -> None:
    """GET and cancel by id, and the submission middleware (innermost but for the direct routes,
    which serve the completion routes ahead of FastAPI and are added after it)."""
    router = APIRouter(tags=["OpenAI background requests"])

    @router.get(BACKGROUND_PATH + "/{request_id}")
    async def retrieve_background(request: Request, request_id: str, wait: float = 0.0) -> Response:
        return await answered(api.wait(tenant_of(request.scope), request_id, wait))

    @router.post(BACKGROUND_PATH + "/{request_id}/cancel")
    async def cancel_background(request: Request, request_id: str) -> Response:
        return await answered(api.cancel(tenant_of(request.scope), request_id))

    app.include_router(router)
    # Appended: inside the HTTP layers and the gateway (which insert themselves further out).
    app.user_middleware.append(Middleware(BackgroundSubmissions, api=api, served_models=served_models))

