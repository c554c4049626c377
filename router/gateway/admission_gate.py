"""The gateway's go-ahead, awaited by the route it lets a request start early. While the gateway
asks Redis whether a request is admitted (its limits, its Idempotency-Key, the cache), the
route already does the work that stays in the process: it validates the body and chooses the
target. It awaits `admitted()` before anything leaves the process or is counted: the call to
the target, the routing metrics, the decision log. A request the gateway refuses, or answers
from its store, is cancelled there, having cost a little of the router's CPU and nothing of a
model's. Without a gateway (or on a route the gateway does not start early) `admitted()`
returns at once."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

_GATE: ContextVar[asyncio.Event | None] = ContextVar("gateway_admission_gate", default=None)


async def admitted() -> None:
    gate = _GATE.get()
    if gate is not None:
        await gate.wait()


def start_gated(work: object, gate: asyncio.Event) -> asyncio.Task:
    """`work` (a coroutine) as a task whose `admitted()` waits for `gate` to be set."""
    token = _GATE.set(gate)
    try:
        # The task copies the context as it is now: the gate is set in it, not here.
        return asyncio.ensure_future(work)
    finally:
        _GATE.reset(token)
