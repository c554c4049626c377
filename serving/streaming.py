"""Streamed responses: messages from an async iterator as server-sent events or JSON lines. Once
a response has started its status code is sent, so a failure mid-stream becomes a last
`{"error": ...}` message (our errors with their message, anything else by its type only)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TypeVar

from fastapi.responses import StreamingResponse
from kserve.errors import InferenceError, InvalidInput
from starlette.types import Receive, Scope, Send

from serving.errors import BadGateway, RequestTimeout, ServiceUnavailable

logger = logging.getLogger(__name__)

# Proxies must pass each event on at once rather than buffer the response.
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# The event that ends an OpenAI stream.
OPENAI_DONE_EVENT = b"data: [DONE]\n\n"
# Errors whose message is meant for the client; anything else is reported by its type only.
CLIENT_ERRORS = (InvalidInput, ServiceUnavailable, RequestTimeout, InferenceError, BadGateway)

Item = TypeVar("Item")


class EventStreamResponse(StreamingResponse):
    """Server-sent events, each sent as soon as it is made. Starlette's StreamingResponse also
    runs a task that listens for the client leaving; ClientConnectionMiddleware already cancels
    the handler then, so this sends directly, one task and its scheduling fewer before each
    stream's first byte. However the response ends, the events' iterator is closed (which closes
    an upstream stream behind it)."""

    media_type = "text/event-stream"

    # FastAPI reads the default status code off this signature for the OpenAPI schema.
    def __init__(self, events: AsyncIterator[bytes], status_code: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(events, status_code=status_code, media_type=self.media_type,
                         headers={**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with aclosing(self.body_iterator) as events:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def stream_messages(items: AsyncIterator[Item], to_message: Callable[[Item], dict]) -> AsyncIterator[dict]:
    async with aclosing(items):
        try:
            async for item in items:
                yield to_message(item)
        except CLIENT_ERRORS as exc:
            yield {"error": str(exc)}
        except Exception as exc:
            logger.exception("stream failed")
            yield {"error": f"internal error: {type(exc).__name__}"}


async def server_sent_events(messages: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    async with aclosing(messages):
        async for message in messages:
            yield b"data: " + json.dumps(message).encode() + b"\n\n"


async def json_lines(messages: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    async with aclosing(messages):
        async for message in messages:
            yield json.dumps(message).encode() + b"\n"
