"""A replica's circuit breaker. Closed, requests go to the replica; open, none does, for
`open_seconds`, doubled on each trip until it closes again, up to `max_open_seconds`; half-open,
`half_open_probes` requests at a time test it: a success closes it, a failure opens it again.
It opens on `failure_threshold` consecutive failed attempts, at once when no connection
could be made (nothing listens there, and the next request should not wait on it too), when the
replica's waiting queue reaches `max_waiting`, or when the median time to the first byte of its
recent answers reaches `max_latency_seconds`. Time comes from a clock that tests can set."""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from router.config import CircuitBreakersConfig

logger = logging.getLogger(__name__)

# The answers whose median time to the first byte is held against max_latency_seconds: a median
# of 5 ignores two slow outliers, and follows a replica that turned slow within 3 answers.
LATENCY_WINDOW = 5


class BreakerState(IntEnum):
    """Its value is router_circuit_breaker_state's."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(slots=True)
class Permit:
    """Leave for one request to go to the replica. Settle it once with what came of the request:
    `succeeded`, `failed`, or `release` when the request ended without a verdict on the replica
    (the client left)."""

    breaker: CircuitBreaker
    probe: bool
    started: float
    settled: bool = False

    def succeeded(self) -> None:
        if self._settle():
            self.breaker._record_success(self.breaker.clock() - self.started)

    def failed(self, reason: str, at_once: bool = False) -> None:
        """`at_once`: open the breaker now, whatever the count of failures."""
        if self._settle():
            self.breaker._record_failure(reason, at_once)

    def release(self) -> None:
        self._settle()

    def _settle(self) -> bool:
        if self.settled:
            return False
        self.settled = True
        if self.probe:
            self.breaker._probes_in_flight -= 1
        return True


class CircuitBreaker:
    """The breaker of the replica `name` (as logs name it). `on_transition` hears of each change
    of state; a change to half-open is noticed when the breaker is next used."""

    def __init__(self, name: str, config: CircuitBreakersConfig, clock: Callable[[], float] = time.monotonic,
                 on_transition: Callable[[BreakerState], None] | None = None) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.on_transition = on_transition
        self._failures = 0  # consecutive failed attempts while closed
        self._trips = 0  # times opened since it was last closed
        self._opened_at: float | None = None  # None: closed
        self._open_for = 0.0
        self._probes_in_flight = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._reported = BreakerState.CLOSED

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if self.seconds_until_half_open() > 0 else BreakerState.HALF_OPEN

    def seconds_until_half_open(self) -> float:
        """0 unless open."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._open_for - self.clock())

    def admits(self) -> bool:
        """Whether a request would be let through now (closed, or half-open with a probe free)."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and self._probes_in_flight < self.config.half_open_probes)

    def admit(self) -> Permit | None:
        """Leave for a request to go to the replica, or None if the breaker holds it back."""
        self._report_half_open()
        if not self.admits():
            return None
        probe = self.state is BreakerState.HALF_OPEN
        if probe:
            self._probes_in_flight += 1
        return Permit(self, probe, self.clock())

    def observe_waiting(self, waiting: float) -> None:
        """The replica's polled waiting queue: at max_waiting or more, no request should join it."""
        limit = self.config.max_waiting
        self._report_half_open()
        if limit is not None and waiting >= limit and self.state is not BreakerState.OPEN:
            self._open(f"{waiting:g} requests waiting (max_waiting {limit})")

    def _record_success(self, latency: float) -> None:
        self._report_half_open()
        state, limit = self.state, self.config.max_latency_seconds
        self._latencies.append(latency)
        if state is BreakerState.HALF_OPEN and limit is not None and latency >= limit:
            self._open(f"a probe took {latency:.3g} s to its first byte (max_latency_seconds {limit:g})")
        elif state is BreakerState.HALF_OPEN:
            self._close()
        elif state is BreakerState.CLOSED:
            self._failures = 0
            self._check_latency()

    def _record_failure(self, reason: str, at_once: bool) -> None:
        self._report_half_open()
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._open(f"a probe failed: {reason}")
        elif state is BreakerState.CLOSED:
            self._failures += 1
            if at_once:
                self._open(reason)
            elif self._failures >= self.config.failure_threshold:
                self._open(f"{self._failures} consecutive failures, the last: {reason}")

    def _check_latency(self) -> None:
        limit = self.config.max_latency_seconds
        if limit is None or len(self._latencies) < LATENCY_WINDOW:
            return
        median = statistics.median(self._latencies)
        if median >= limit:
            self._open(f"its last {LATENCY_WINDOW} answers took a median {median:.3g} s to their first byte "
                       f"(max_latency_seconds {limit:g})")

    def _open(self, reason: str) -> None:
        self._trips += 1
        self._open_for = min(self.config.open_seconds * 2 ** (self._trips - 1), self.config.max_open_seconds)
        self._opened_at = self.clock()
        self._failures = 0
        # Answers from before it opened say nothing of how it does once it recovers.
        self._latencies.clear()
        logger.warning("%s: circuit breaker open for %g s: %s", self.name, self._open_for, reason)
        self._report(BreakerState.OPEN)

    def _close(self) -> None:
        self._opened_at, self._trips, self._failures = None, 0, 0
        logger.info("%s: circuit breaker closed: a probe succeeded", self.name)
        self._report(BreakerState.CLOSED)

    def _report_half_open(self) -> None:
        if self._reported is BreakerState.OPEN and self.state is BreakerState.HALF_OPEN:
            logger.info("%s: circuit breaker half-open after %g s: up to %d probe(s) at a time", self.name,
                        self._open_for, self.config.half_open_probes)
            self._report(BreakerState.HALF_OPEN)

    def _report(self, state: BreakerState) -> None:
        self._reported = state
        if self.on_transition is not None:
            self.on_transition(state)
