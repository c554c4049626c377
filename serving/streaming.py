"""Streamed responses: messages from an async iterator as server-sent events or JSON lines. Once
a response has started its status code is sent, so a failure mid-stream becomes a last
`{"error": ...}` message (our errors with their message, anything else by its type only)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TypeVar

from kserve.errors import InferenceError, InvalidInput

from serving.errors import BadGateway, RequestTimeout, ServiceUnavailable

logger = logging.getLogger(__name__)

# Proxies must pass each event on at once rather than buffer the response.
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# The event that ends an OpenAI stream.
OPENAI_DONE_EVENT = b"data: [DONE]\n\n"
# Errors whose message is meant for the client; anything else is reported by its type only.
CLIENT_ERRORS = (InvalidInput, ServiceUnavailable, RequestTimeout, InferenceError, BadGateway)

Item = TypeVar("Item")


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
