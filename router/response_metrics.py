"""`router_responses_total{model_name, status}`: every HTTP response the router sends its clients,
by status code, whatever sent it: a route (OpenAI completions and chats, streams included, KServe
v1/v2, Files and Batches), the gateway (401, 429, a fail-closed 503), the shared layers (413,
500), KServe (a 503 while not ready). The router's own view of its 429s and 503s, beside the
predictors'. WebSocket sessions are not counted (their errors travel in messages, not statuses),
nor batch lines, which the worker sends through the app in process (router_batch_lines_total
counts them)."""

from __future__ import annotations

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.batch.capacity import BATCH_LINE_SCOPE_KEY

RESPONSES = Counter("router_responses", "HTTP responses the router sent, by status code.", ["model_name", "status"])

# Series from the start, so that a dashboard's rate() sees the first 429 or 503 of a process.
STATUSES_FROM_THE_START = (200, 400, 401, 404, 413, 429, 500, 503)


class ResponseStatusMiddleware:
    """Counts each response's status as its `http.response.start` goes out. On every request's
    path, so it keeps one labelled counter per status and allocates nothing else but the wrapper
    of `send`."""

    def __init__(self, app: ASGIApp, model_name: str) -> None:
        self.app = app
        self.model_name = model_name
        self.counters = {status: RESPONSES.labels(model_name, str(status)) for status in STATUSES_FROM_THE_START}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or BATCH_LINE_SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.count(message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)

    def count(self, status: int) -> None:
        counter = self.counters.get(status)
        if counter is None:
            counter = self.counters[status] = RESPONSES.labels(self.model_name, str(status))
        counter.inc()
