"""A batch line sent through the router's own ASGI app, in process: the whole middleware stack
(bounded bodies, the gateway's limits and metering, Retry-After) and the OpenAI edge (routing,
fallback, the cascade) treat it exactly as a client's request, without a socket in between. The
batch's tenant rides in the scope (TENANT_SCOPE_KEY), where only code in this process can put it:
a client cannot claim a tenant that way, only with its key. One difference: a line that sets no
`priority` is sent at BATCH_PRIORITY, so that the engine starts waiting online requests first."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass

from starlette.types import ASGIApp, Message

from router.batch.capacity import BATCH_LINE_SCOPE_KEY
from router.gateway.middleware import TENANT_SCOPE_KEY
from serving.openai_routes import OPENAI_PREFIX

# The `/openai` of the router's OpenAI paths; a batch's endpoint is OpenAI's `/v1/...`.
OPENAI_ROOT = OPENAI_PREFIX.removesuffix("/v1")
REQUEST_ID_HEADER = "x-request-id"
# The gateway's id of a metered request (router/gateway/middleware.py), the answer's request_id.
GATEWAY_REQUEST_ID_HEADER = "x-gateway-request-id"
# vLLM's priority (lower first) of a batch line that sets none; online requests default to 0.
BATCH_PRIORITY = 100


def at_batch_priority(body: bytes) -> bytes:
    """A line's body with `priority` BATCH_PRIORITY unless it sets its own (validation made it a
    JSON object when the batch was created)."""
    fields = json.loads(body)
    if "priority" in fields:
        return body
    return json.dumps({**fields, "priority": BATCH_PRIORITY}).encode()


@dataclass(frozen=True, slots=True)
class DispatchedAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def request_id(self) -> str | None:
        return self.headers.get(GATEWAY_REQUEST_ID_HEADER) or self.headers.get(REQUEST_ID_HEADER)


class InProcessDispatcher:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def post(self, endpoint: str, body: bytes, tenant: str) -> DispatchedAnswer:
        """POST `body` to /openai`endpoint` as `tenant`; the whole answer."""
        path = OPENAI_ROOT + endpoint
        request_id = uuid.uuid4().hex
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "state": {},
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (REQUEST_ID_HEADER.encode(), request_id.encode())],
            TENANT_SCOPE_KEY: tenant, BATCH_LINE_SCOPE_KEY: True,
        }
        answer = _Collector()
        await self.app(scope, _Receive(body), answer.send)
        return answer.answer(request_id)


class _Receive:
    """The body at once, then nothing: no client is there to leave."""

    def __init__(self, body: bytes) -> None:
        self.body: bytes | None = body

    async def __call__(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # cancelled by the app once its answer is sent
        return {"type": "http.disconnect"}


class _Collector:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                            for name, value in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    def answer(self, request_id: str) -> DispatchedAnswer:
        headers = {REQUEST_ID_HEADER: request_id, **self.headers}
        return DispatchedAnswer(self.status, headers, b"".join(self.chunks))
