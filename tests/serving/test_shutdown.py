"""The SIGTERM hook on its own (serving/shutdown.py), with a stand-in for uvicorn's handler: the model
drains at once; with WebSocket sessions the signal reaches uvicorn only once they have drained
(or the grace period is over), with the rest of the grace period for its own wait; a second
signal hands on at once. (Whole servers under SIGTERM: tests/reliability/test_drain.py.)"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from fastapi import FastAPI

from serving.shutdown import drain_on_signal

GRACE_SECONDS = 2.0


class Model:
    draining = False

    def start_draining(self) -> None:
        self.draining = True


class Sessions:
    """Drains when `done` is set."""

    def __init__(self) -> None:
        self.draining = False
        self.done = asyncio.Event()

    def start_draining(self) -> None:
        self.draining = True

    async def drained(self) -> None:
        await self.done.wait()


@dataclass
class Uvicorn:
    """Stands for uvicorn's Server: its handle_exit is the handler the hook chains to."""

    config: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(timeout_graceful_shutdown=GRACE_SECONDS))
    signals: list[tuple[int, float]] = field(default_factory=list)

    def handle_exit(self, signum: int, frame: object) -> None:
        self.signals.append((signum, time.monotonic()))


@pytest.fixture
def uvicorn() -> Iterator[Uvicorn]:
    server = Uvicorn()
    saved = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield server
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def serving(model: Model, sessions: Sessions | None, grace: float = GRACE_SECONDS):
    app = FastAPI()
    drain_on_signal(app, model, grace, sessions)
    return app.router.lifespan_context(app)


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_without_sessions_the_signal_goes_on_at_once(uvicorn):
    model = Model()
    async with serving(model, None):
        signal.raise_signal(signal.SIGTERM)
        assert model.draining and [signum for signum, _ in uvicorn.signals] == [signal.SIGTERM]


async def test_the_signal_waits_for_the_sessions_and_uvicorn_gets_the_rest_of_the_grace(uvicorn):
    model, sessions = Model(), Sessions()
    async with serving(model, sessions):
        signal.raise_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert model.draining
        await until(lambda: sessions.draining)
        await asyncio.sleep(0.3)
        assert uvicorn.signals == []
        sessions.done.set()
        await until(lambda: uvicorn.signals)
    [(signum, handed_on)] = uvicorn.signals
    assert signum == signal.SIGTERM
    waited = handed_on - sent
    assert 0.3 <= waited < GRACE_SECONDS
    assert uvicorn.config.timeout_graceful_shutdown == pytest.approx(GRACE_SECONDS - waited, abs=0.1)


async def test_sessions_that_do_not_drain_in_the_grace_period_are_left_to_uvicorn(uvicorn):
    model, sessions = Model(), Sessions()
    async with serving(model, sessions, grace=0.2):
        signal.raise_signal(signal.SIGTERM)
        await until(lambda: uvicorn.signals)
    assert [signum for signum, _ in uvicorn.signals] == [signal.SIGTERM]
    assert uvicorn.config.timeout_graceful_shutdown == 0.0


async def test_a_second_signal_hands_on_at_once_and_only_once(uvicorn):
    model, sessions = Model(), Sessions()
    async with serving(model, sessions):
        signal.raise_signal(signal.SIGTERM)
        await until(lambda: sessions.draining)
        signal.raise_signal(signal.SIGINT)
        assert [signum for signum, _ in uvicorn.signals] == [signal.SIGINT]
        sessions.done.set()
        await asyncio.sleep(0.1)
    assert [signum for signum, _ in uvicorn.signals] == [signal.SIGINT]
