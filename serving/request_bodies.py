"""JSON request bodies decoded off the event loop when they are large.

A body is bounded (--max_body_bytes, 1 MiB by default), but decoding one at the bound is not
free: 200,000 prompt token ids take 15 ms to parse and validate, 20,000 chat messages 30 ms, on
the 2-core dev VM. On the event loop that stalls every other request of the server - other
streams' tokens, health checks - for as long. Bodies up to INLINE_DECODE_BYTES (under a
millisecond) are decoded in place, where a worker thread's hand-off would cost more than it
saves; larger ones in a worker thread. The decoder holds the GIL, but Python hands it back to the
loop's thread every switch interval (5 ms), so the loop keeps turning while a large body is read.

Both ways a body reaches a handler go through here: the direct routes (serving/direct_routes.py),
which validate the raw body with its pydantic model, and FastAPI's routes, whose JSON decoding
ThreadedJSONRoute moves off the loop (pydantic's validation of the decoded value stays inline:
a fraction of the decoding's cost)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import Response

INLINE_DECODE_BYTES = 64 * 1024

Model = TypeVar("Model", bound=BaseModel)
Result = TypeVar("Result")


async def off_loop_if_large(size: int, work: Callable[[], Result]) -> Result:
    """work(), which reads `size` bytes of JSON: in place if that is cheap, else in a worker thread."""
    if size <= INLINE_DECODE_BYTES:
        return work()
    return await asyncio.to_thread(work)


async def validate_json_body(body_model: type[Model], body: bytes) -> Model:
    """`body` parsed and validated as `body_model` (pydantic's ValidationError if it is not one)."""
    return await off_loop_if_large(len(body), lambda: body_model.model_validate_json(body))


class ThreadedJSONRoute(APIRoute):
    """A FastAPI route whose large JSON body is decoded in a worker thread before FastAPI reads it
    (Starlette's Request keeps the decoded value, and FastAPI asks the request for it). Routes
    that take no body model (KServe's v1 and v2 handlers read the raw bytes themselves) are left
    as they are; so is a body that is not valid JSON, which FastAPI then refuses as usual."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def decode_then_handle(request: Request) -> Response:
            body = await request.body()
            if len(body) > INLINE_DECODE_BYTES:
                # Not JSON: FastAPI decodes it again, inline, and refuses it as it always does.
                with contextlib.suppress(ValueError, RecursionError):
                    request._json = await asyncio.to_thread(json.loads, body)
            return await handler(request)

        return decode_then_handle


def json_api_router(**kwargs: Any) -> APIRouter:
    """An APIRouter whose routes decode large JSON bodies off the event loop."""
    return APIRouter(route_class=ThreadedJSONRoute, **kwargs)
