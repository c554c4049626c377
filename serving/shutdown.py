"""Graceful SIGTERM. Uvicorn owns the signal while it serves: on SIGTERM it stops accepting
connections and waits (up to the grace period) for the open ones, then re-raises the signal to
KServe's handler, which stops gRPC and calls the model's stop_engine(). What it lacks is refusing
new requests at once on connections already open and on gRPC: this hook makes the model drain
(503) first, then hands the signal on to uvicorn."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Protocol

from fastapi import FastAPI

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drainable(Protocol):
    def start_draining(self) -> None:
        """Refuse new requests (503) from now on; those in flight go on."""


def drain_on_signal(app: FastAPI, model: Drainable) -> None:
    """Install the hook at the app's startup, which runs once uvicorn has taken the signals."""
    serve_app = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[object]:
        for sig in DRAIN_SIGNALS:
            _chain_handler(sig, model)
        async with serve_app(app_) as state:
            yield state

    app.router.lifespan_context = lifespan


def _chain_handler(sig: signal.Signals, model: Drainable) -> None:
    previous = signal.getsignal(sig)
    if not callable(previous):
        return

    def drain_then_previous(signum: int, frame: FrameType | None) -> None:
        model.start_draining()
        previous(signum, frame)

    signal.signal(sig, drain_then_previous)
