"""Server-sent events: one `data: {json}` event per message."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing

# Proxies must pass each event on at once rather than buffer the response.
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def server_sent_events(messages: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    async with aclosing(messages):
        async for message in messages:
            yield b"data: " + json.dumps(message).encode() + b"\n\n"
