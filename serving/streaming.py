"""Streamed responses: messages from an async iterator as server-sent events or JSON lines. Once
a response has started its status code is sent, so a failure mid-stream becomes a last
`{"error": ...}` message (our errors with their message, anything else by its type only)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

from fastapi.responses import StreamingResponse
from kserve.errors import InferenceError, InvalidInput
from starlette.types import Receive, Scope, Send

from serving.errors import BadGateway, RequestTimeout, ServiceUnavailable
from serving.sse import encode_event

logger = logging.getLogger(__name__)

# Proxies must pass each event on at once rather than buffer the response.
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# Errors whose message is meant for the client; anything else is reported by its type only.
CLIENT_ERRORS = (InvalidInput, ServiceUnavailable, RequestTimeout, InferenceError, BadGateway)

Item = TypeVar("Item")


async def open_stream(items: AsyncIterator[Item]) -> AsyncIterator[Item]:
    """Start a stream and wait for its first item, so that a refused request (bad input,
    overload) fails with its own status code before any response has started. The returned
    iterator yields that item first; closing it closes the stream."""
    try:
        first = await anext(items)
    except BaseException:
        await items.aclose()
        raise
    return _prepend(first, items)


async def _prepend(first: Item, rest: AsyncIterator[Item]) -> AsyncIterator[Item]:
    async with aclosing(rest):
        yield first
        async for item in rest:
            yield item


async def gather_or_cancel(awaitables: list[Awaitable[Item]]) -> list[Item]:
    """Run them concurrently; if one fails, the rest are cancelled (which aborts their requests
    upstream) and its exception is raised as it is, not in a group."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(awaitable) for awaitable in awaitables]
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return [task.result() for task in tasks]


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
            yield encode_event(message)


async def json_lines(messages: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    async with aclosing(messages):
        async for message in messages:
            yield json.dumps(message).encode() + b"\n"
