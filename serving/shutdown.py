"""Graceful SIGTERM. Uvicorn owns the signal while it serves: on SIGTERM it stops accepting
connections and waits (up to the grace period) for the open ones, then re-raises the signal to
KServe's handler, which stops gRPC and calls the model's stop_engine(). What it lacks:
- refusing new requests at once on connections already open and on gRPC: this hook makes the
  model drain (503) first;
- letting WebSocket connections finish: uvicorn closes every one with 1012 the moment it starts
  shutting down, losing their requests in flight. With `sessions`, the hook first drains them
  (no new requests, each closes once its requests have ended), and only then hands the signal
  on to uvicorn, with what is left of the grace period for its own wait.

A second signal while the sessions drain hands on at once (Ctrl-C twice still stops the server)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from fastapi import FastAPI

from serving.lifespan import chain_lifespan

logger = logging.getLogger(__name__)

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

SignalHandler = Callable[[int, FrameType | None], object]


class Drainable(Protocol):
    def start_draining(self) -> None:
        """Refuse new requests (503) from now on; those in flight go on."""


class DrainableSessions(Protocol):
    def start_draining(self) -> None:
        """Take no new requests; close each connection once its requests have ended."""

    async def drained(self) -> None:
        """Returns once every connection has ended its requests and been closed."""


def drain_on_signal(app: FastAPI, model: Drainable, grace_period: float = 0.0,
                    sessions: DrainableSessions | None = None) -> None:
    """Install the hook at the app's startup, which runs once uvicorn has taken the signals."""

    async def install_hook() -> None:
        hook = _DrainHook(model, sessions, grace_period, asyncio.get_running_loop())
        for sig in DRAIN_SIGNALS:
            hook.chain(sig)

    chain_lifespan(app, before_startup=install_hook)


class _DrainHook:
    def __init__(self, model: Drainable, sessions: DrainableSessions | None, grace_period: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.model = model
        self.sessions = sessions
        self.grace_period = grace_period
        self.loop = loop
        self.draining_sessions = False
        self.handed_on = False

    def chain(self, sig: signal.Signals) -> None:
        previous = signal.getsignal(sig)
        if not callable(previous):
            return

        def drain_then_previous(signum: int, frame: FrameType | None) -> None:
            self.model.start_draining()
            if self.sessions is None or self.draining_sessions:
                self.handed_on = True
                previous(signum, frame)
                return
            self.draining_sessions = True
            # A signal handler interrupts the loop's own code: the drain starts from the loop.
            self.loop.call_soon_threadsafe(self._start_session_drain, previous, signum)

        signal.signal(sig, drain_then_previous)

    def _start_session_drain(self, previous: SignalHandler, signum: int) -> None:
        self.sessions.start_draining()
        self.loop.create_task(self._drain_sessions_then(previous, signum))

    async def _drain_sessions_then(self, previous: SignalHandler, signum: int) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.sessions.drained(), self.grace_period)
        except TimeoutError:
            logger.warning("WebSocket requests still in flight after the %gs grace period", self.grace_period)
        if self.handed_on:  # a second signal did it already
            return
        self.handed_on = True
        _shorten_grace(previous, max(0.0, self.grace_period - (time.monotonic() - started)))
        previous(signum, None)


def _shorten_grace(uvicorn_handler: SignalHandler, seconds_left: float) -> None:
    """The sessions' wait came out of the grace period: uvicorn gets the rest for its own. Its
    handler is its Server's bound handle_exit, whose config holds the timeout."""
    config = getattr(getattr(uvicorn_handler, "__self__", None), "config", None)
    if getattr(config, "timeout_graceful_shutdown", None) is not None:
        config.timeout_graceful_shutdown = seconds_left
