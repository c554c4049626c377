"""A component's own startup and shutdown work, run with the lifespan of KServe's app (which KServe
builds and uvicorn runs): the one place that wraps it, for every component and layer that needs it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

LifespanStep = Callable[[], Awaitable[None]]


def chain_lifespan(app: FastAPI, *, before_startup: LifespanStep | None = None,
                   after_startup: LifespanStep | None = None, after_shutdown: LifespanStep | None = None) -> None:
    """Run the steps given around the app's lifespan as it is now: `before_startup` ahead of its
    startup, `after_startup` once it has started, `after_shutdown` once it has shut down (also
    when it failed; not when `before_startup` did). Steps chained later run outside earlier ones."""
    serve_app = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[object]:
        if before_startup is not None:
            await before_startup()
        try:
            async with serve_app(app_) as state:
                if after_startup is not None:
                    await after_startup()
                yield state
        finally:
            if after_shutdown is not None:
                await after_shutdown()

    app.router.lifespan_context = lifespan
