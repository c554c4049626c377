"""OpenAI's Files and Batch routes on the router: upload, list, retrieve, delete and read files;
create, list, retrieve and cancel batches. A batch's input file is checked inside create (it is
local), so a malformed one gives a batch that has failed, its errors naming the lines. Files and
batches belong to the tenant the gateway authenticated (TENANT_SCOPE_KEY; everything is
`anonymous` without tenants), and another tenant's ids are answered 404 like unknown ones.
Every client mistake is a 4xx in OpenAI's error shape that says what is allowed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Scope

from router.batch.finalize import Finalizer
from router.batch.metrics import BATCH_TRANSITIONS
from router.batch.objects import (
    INPUT_PURPOSE,
    PURPOSES,
    BatchRequestError,
    batch_object,
    check_endpoint,
    check_limit,
    check_metadata,
    completion_window_seconds,
    file_object,
    list_object,
    new_batch_id,
    new_file_id,
)
from router.batch.store import (
    FINAL_STATUSES,
    BatchKind,
    BatchRecord,
    BatchStatus,
    BatchStore,
    BatchStoreUnavailable,
    FileRecord,
)
from router.batch.upload import parse_upload
from router.batch.validation import count_request_lines, validate_batch_file
from router.gateway.gateway import ANONYMOUS
from router.gateway.middleware import TENANT_SCOPE_KEY
from serving.openai_protocol import openai_error_body
from serving.openai_routes import BATCHES_PATH, FILES_PATH

# What a multipart upload adds to its file's bytes (boundaries, part headers, the purpose field).
MULTIPART_OVERHEAD_BYTES = 64 << 10
DEFAULT_FILE_LIST_LIMIT = 10000
DEFAULT_BATCH_LIST_LIMIT = 20


@dataclass(frozen=True, slots=True)
class FileLimits:
    max_file_bytes: int
    max_lines: int


class ApiError(Exception):
    """An answer other than 200, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        return JSONResponse(openai_error_body(self.status, str(self), self.param, self.code), status_code=self.status)


class BatchApi:
    """The routes' work, against the store; `finalizer` moves batches (cancel)."""

    def __init__(self, store: BatchStore, finalizer: Finalizer, limits: FileLimits,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.finalizer = finalizer
        self.limits = limits
        self.clock = clock

    # Files ------------------------------------------------------------------------------

    async def upload(self, tenant: str, body: bytes, content_type: str) -> dict:
        upload = await asyncio.to_thread(parse_upload, body, content_type, self.limits.max_file_bytes)
        if upload.purpose is None:
            raise BatchRequestError(f"the upload has no 'purpose' field (it must be {INPUT_PURPOSE!r})", "purpose")
        if upload.purpose != INPUT_PURPOSE:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"purpose must be {INPUT_PURPOSE!r} (files with purpose "
                           f"'batch_output' are written by batches); got {upload.purpose!r}", "purpose")
        content = upload.content
        if len(content) > self.limits.max_file_bytes:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the file is larger than this router's limit of "
                           f"{self.limits.max_file_bytes} bytes (--batch_max_file_bytes)", "file")
        lines = await asyncio.to_thread(_count_utf8_lines, content)
        if lines is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the file is not UTF-8 text: a batch file is JSONL, one JSON "
                           "request per line", "file")
        if lines > self.limits.max_lines:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the file has {lines} requests, more than this "
                           f"router's limit of {self.limits.max_lines} (--batch_max_lines)", "file")
        record = FileRecord(new_file_id(), tenant, INPUT_PURPOSE, upload.filename, len(content), int(self.clock()))
        await self.store.add_file(record, content)
        return file_object(record)

    async def file(self, tenant: str, file_id: str) -> FileRecord:
        record = await self.store.file(file_id)
        if record is None or record.tenant != tenant:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no file with id {file_id!r}", "file_id", "file_not_found")
        return record

    async def content(self, tenant: str, file_id: str) -> bytes:
        await self.file(tenant, file_id)
        content = await self.store.file_content(file_id)
        if content is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no file with id {file_id!r}", "file_id", "file_not_found")
        return content

    async def files(self, tenant: str, purpose: str | None, after: str | None, limit: int, order: str) -> dict:
        if purpose is not None and purpose not in PURPOSES:
            raise BatchRequestError(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}", "purpose")
        if order not in ("asc", "desc"):
            raise BatchRequestError(f"order must be 'asc' or 'desc'; got {order!r}", "order")
        limit = check_limit(limit)
        records = await self.store.files(tenant, purpose, after, limit + 1, order == "desc")
        return list_object([file_object(record) for record in records[:limit]], len(records) > limit)

    async def delete(self, tenant: str, file_id: str) -> dict:
        await self.file(tenant, file_id)
        # Finalizing reads the input file: it stays while a batch that needs it is active.
        active = [batch.id for batch in await self.store.active_batches() if batch.input_file_id == file_id]
        if active:
            raise ApiError(HTTPStatus.CONFLICT, f"file {file_id!r} is the input of batch {active[0]}, which is still "
                           "active: cancel it or wait for it to end before deleting the file", "file_id")
        deleted = await self.store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": deleted}

    # Batches ----------------------------------------------------------------------------

    async def create(self, tenant: str, request: dict) -> dict:
        endpoint = check_endpoint(request.get("endpoint"))
        window = request.get("completion_window")
        window_seconds = completion_window_seconds(window)
        metadata = check_metadata(request.get("metadata"))
        input_file = await self._input_file(tenant, request.get("input_file_id"))
        content = await self.store.file_content(input_file.id) or b""
        checked = await asyncio.to_thread(validate_batch_file, content, endpoint, self.limits.max_lines)
        now = int(self.clock())
        status = BatchStatus.FAILED if checked.errors else BatchStatus.IN_PROGRESS
        record = BatchRecord(new_batch_id(), tenant, endpoint, input_file.id, window, status, now,
                             now + window_seconds, len(checked.lines), metadata, {f"{status}_at": now},
                             errors=checked.errors or None)
        await self.store.add_batch(record, checked.lines)
        BATCH_TRANSITIONS.labels(str(status), str(record.kind)).inc()
        return batch_object(record, 0, 0)

    async def _input_file(self, tenant: str, file_id: object) -> FileRecord:
        if not isinstance(file_id, str) or not file_id:
            raise BatchRequestError("input_file_id is required: the id of a file uploaded with purpose 'batch'",
                                    "input_file_id")
        record = await self.store.file(file_id)
        if record is None or record.tenant != tenant:
            raise BatchRequestError(f"no file with id {file_id!r}", "input_file_id", "file_not_found")
        if record.purpose != INPUT_PURPOSE:
            raise BatchRequestError(f"file {file_id!r} has purpose {record.purpose!r}; a batch's input file must "
                                    f"have purpose {INPUT_PURPOSE!r}", "input_file_id")
        return record

    async def batch(self, tenant: str, batch_id: str) -> BatchRecord:
        record = await self.store.batch(batch_id)
        # A background request is stored as a batch of one, but it is not one of the tenant's batches.
        if record is None or record.tenant != tenant or record.kind is not BatchKind.BATCH:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no batch with id {batch_id!r}", "batch_id", "batch_not_found")
        return record

    async def batch_object(self, record: BatchRecord) -> dict:
        return batch_object(record, *await self.store.counts(record.id))

    async def batches(self, tenant: str, after: str | None, limit: int) -> dict:
        limit = check_limit(limit)
        records = await self.store.batches(tenant, after, limit + 1)
        data = [await self.batch_object(record) for record in records[:limit]]
        return list_object(data, len(records) > limit)

    async def cancel(self, tenant: str, batch_id: str) -> dict:
        """in_progress -> cancelling (the sweeper ends it with its files); a batch already
        cancelling or cancelled is answered as it is; one that ended otherwise cannot be."""
        record = await self.batch(tenant, batch_id)
        moved = await self.finalizer.transition(batch_id, frozenset({BatchStatus.IN_PROGRESS}),
                                                BatchStatus.CANCELLING)
        if moved is not None:
            return await self.batch_object(moved)
        record = await self.batch(tenant, batch_id)
        if record.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED) or (
                record.status is BatchStatus.FINALIZING and record.ending is BatchStatus.CANCELLED):
            return await self.batch_object(record)
        state = "has ended" if record.status in FINAL_STATUSES else "is finalizing"
        raise ApiError(HTTPStatus.CONFLICT, f"batch {batch_id!r} {state} ({record.status}): only a batch in "
                       "progress can be cancelled", "batch_id")


def _count_utf8_lines(content: bytes) -> int | None:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return count_request_lines(content)


def tenant_of(scope: Scope) -> str:
    """Named by the gateway (router/gateway/middleware.py); without a gateway there are no tenants."""
    return scope.get(TENANT_SCOPE_KEY, ANONYMOUS.name)


async def answered(work: Awaitable[dict | Response]) -> Response:
    try:
        answer = await work
    except ApiError as exc:
        return exc.response()
    except BatchRequestError as exc:
        return ApiError(HTTPStatus.BAD_REQUEST, str(exc), exc.param, exc.code).response()
    except BatchStoreUnavailable as exc:
        response = ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"the batch store cannot be reached now: {exc}").response()
        response.headers["retry-after"] = "1"
        return response
    return answer if isinstance(answer, Response) else JSONResponse(answer)


async def _json_object(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise BatchRequestError("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BatchRequestError("the request body must be a JSON object")
    return body


def add_batch_routes(app: FastAPI, api: BatchApi) -> None:
    """The routes on `app`; the upload's body bound is raised by router/batch/setup.py."""
    router = APIRouter(tags=["OpenAI batch"])

    @router.post(FILES_PATH)
    async def upload_file(request: Request) -> Response:
        async def work() -> dict:
            return await api.upload(tenant_of(request.scope), await request.body(), request.headers.get("content-type", ""))
        return await answered(work())

    @router.get(FILES_PATH)
    async def list_files(request: Request, purpose: str | None = None, after: str | None = None,
                         limit: int = DEFAULT_FILE_LIST_LIMIT, order: str = "desc") -> Response:
        return await answered(api.files(tenant_of(request.scope), purpose, after, limit, order))

    @router.get(FILES_PATH + "/{file_id}")
    async def retrieve_file(request: Request, file_id: str) -> Response:
        async def work() -> dict:
            return file_object(await api.file(tenant_of(request.scope), file_id))
        return await answered(work())

    @router.delete(FILES_PATH + "/{file_id}")
    async def delete_file(request: Request, file_id: str) -> Response:
        return await answered(api.delete(tenant_of(request.scope), file_id))

    @router.get(FILES_PATH + "/{file_id}/content")
    async def file_content(request: Request, file_id: str) -> Response:
        async def work() -> Response:
            return Response(await api.content(tenant_of(request.scope), file_id), media_type="application/octet-stream")
        return await answered(work())

    @router.post(BATCHES_PATH)
    async def create_batch(request: Request) -> Response:
        async def work() -> dict:
            return await api.create(tenant_of(request.scope), await _json_object(request))
        return await answered(work())

    @router.get(BATCHES_PATH)
    async def list_batches(request: Request, after: str | None = None,
                           limit: int = DEFAULT_BATCH_LIST_LIMIT) -> Response:
        return await answered(api.batches(tenant_of(request.scope), after, limit))

    @router.get(BATCHES_PATH + "/{batch_id}")
    async def retrieve_batch(request: Request, batch_id: str) -> Response:
        async def work() -> dict:
            return await api.batch_object(await api.batch(tenant_of(request.scope), batch_id))
        return await answered(work())

    @router.post(BATCHES_PATH + "/{batch_id}/cancel")
    async def cancel_batch(request: Request, batch_id: str) -> Response:
        return await answered(api.cancel(tenant_of(request.scope), batch_id))

    app.include_router(router)
