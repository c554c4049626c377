"""A replica's circuit breaker, on a clock the tests move: consecutive failures open it, a success
resets the count, a failed connection opens it at once; open, it lets nothing through until it
half-opens, then exactly `half_open_probes` at a time; a probe's success closes it, its failure
opens it again for twice as long (up to the cap); a long waiting queue or slow answers open it."""

from __future__ import annotations

import logging

import pytest

from router.breakers import LATENCY_WINDOW, BreakerState, CircuitBreaker
from router.config import CircuitBreakersConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, transitions: list[BreakerState] | None = None, **settings: object) -> CircuitBreaker:
    config = CircuitBreakersConfig.model_validate(settings)
    return CircuitBreaker("llm-small replica http://a", config, clock, on_transition=transitions.append
                          if transitions is not None else None)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.admit().failed("answered 503")


def succeed(breaker: CircuitBreaker, clock: Clock, latency: float = 0.0) -> None:
    permit = breaker.admit()
    clock.advance(latency)
    permit.succeeded()


def test_consecutive_failures_open_it(clock):
    transitions = []
    tested = breaker(clock, transitions, failure_threshold=3)
    fail(tested, 2)
    assert tested.state is BreakerState.CLOSED and tested.admits()
    fail(tested)
    assert tested.state is BreakerState.OPEN and transitions == [BreakerState.OPEN]


def test_a_success_resets_the_count_of_failures(clock):
    tested = breaker(clock, failure_threshold=3)
    fail(tested, 2)
    succeed(tested, clock)
    fail(tested, 2)
    assert tested.state is BreakerState.CLOSED


def test_a_failed_connection_opens_it_at_once(clock):
    tested = breaker(clock, failure_threshold=3)
    tested.admit().failed("no connection", at_once=True)
    assert tested.state is BreakerState.OPEN


def test_open_it_lets_nothing_through_until_it_half_opens(clock):
    tested = breaker(clock, failure_threshold=1, open_seconds=5)
    fail(tested)
    assert tested.admit() is None and not tested.admits()
    clock.advance(4.5)
    assert tested.seconds_until_half_open() == pytest.approx(0.5)
    assert tested.admit() is None
    clock.advance(0.5)
    assert tested.state is BreakerState.HALF_OPEN and tested.seconds_until_half_open() == 0


@pytest.mark.parametrize("probes", [1, 2])
def test_half_open_it_admits_exactly_its_probes_at_a_time(clock, probes):
    tested = breaker(clock, failure_threshold=1, open_seconds=5, half_open_probes=probes)
    fail(tested)
    clock.advance(5)
    permits = [tested.admit() for _ in range(probes)]
    assert all(permits) and tested.admit() is None and not tested.admits()
    # A probe that ends without a verdict (its client left) frees its place for another.
    permits[0].release()
    assert tested.admit() is not None
    assert tested.state is BreakerState.HALF_OPEN


def test_a_probes_success_closes_it(clock):
    transitions = []
    tested = breaker(clock, transitions, failure_threshold=1, open_seconds=5)
    fail(tested)
    clock.advance(5)
    succeed(tested, clock)
    assert tested.state is BreakerState.CLOSED and tested.admits()
    assert transitions == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_probes_failure_opens_it_again_for_twice_as_long_up_to_the_cap(clock):
    tested = breaker(clock, failure_threshold=1, open_seconds=5, max_open_seconds=12)
    fail(tested)
    for open_for in (10, 12, 12):
        clock.advance(tested.seconds_until_half_open())
        fail(tested)
        assert tested.state is BreakerState.OPEN and tested.seconds_until_half_open() == open_for
    # Once closed, the next trip waits open_seconds again.
    clock.advance(12)
    succeed(tested, clock)
    fail(tested)
    assert tested.seconds_until_half_open() == 5


def test_an_outcome_from_before_it_opened_does_not_count(clock):
    tested = breaker(clock, failure_threshold=2, open_seconds=5)
    late = tested.admit()
    fail(tested, 2)
    late.succeeded()
    assert tested.state is BreakerState.OPEN


def test_a_long_waiting_queue_opens_it(clock):
    tested = breaker(clock, max_waiting=8, open_seconds=5)
    tested.observe_waiting(7)
    assert tested.state is BreakerState.CLOSED
    tested.observe_waiting(8)
    assert tested.state is BreakerState.OPEN
    # Still long when it half-opens: it opens again, for longer.
    clock.advance(5)
    tested.observe_waiting(9)
    assert tested.state is BreakerState.OPEN and tested.seconds_until_half_open() == 10


def test_without_max_waiting_the_queue_is_not_watched(clock):
    tested = breaker(clock)
    tested.observe_waiting(10_000)
    assert tested.state is BreakerState.CLOSED


def test_slow_answers_open_it_by_their_median(clock):
    tested = breaker(clock, max_latency_seconds=2.0, open_seconds=5)
    for _ in range(LATENCY_WINDOW):
        succeed(tested, clock, latency=0.1)
    # Slow outliers, fewer than half the window, do not open it; one more makes the median slow.
    for _ in range(LATENCY_WINDOW // 2):
        succeed(tested, clock, latency=3.0)
    assert tested.state is BreakerState.CLOSED
    succeed(tested, clock, latency=3.0)
    assert tested.state is BreakerState.OPEN


def test_a_slow_probe_opens_it_again(clock):
    tested = breaker(clock, failure_threshold=1, max_latency_seconds=2.0, open_seconds=5)
    fail(tested)
    clock.advance(5)
    succeed(tested, clock, latency=2.5)
    assert tested.state is BreakerState.OPEN
    clock.advance(10)
    succeed(tested, clock, latency=0.5)
    assert tested.state is BreakerState.CLOSED


def test_each_transition_is_logged_once_with_its_reason_and_duration(clock, caplog):
    tested = breaker(clock, failure_threshold=2, open_seconds=5)
    with caplog.at_level(logging.INFO, logger="router.breakers"):
        fail(tested, 2)
        clock.advance(5)
        assert tested.admits() and tested.admits()
        succeed(tested, clock)
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("WARNING", "llm-small replica http://a: circuit breaker open for 5 s: 2 consecutive failures, the last: "
                    "answered 503"),
        ("INFO", "llm-small replica http://a: circuit breaker half-open after 5 s: up to 1 probe(s) at a time"),
        ("INFO", "llm-small replica http://a: circuit breaker closed: a probe succeeded"),
    ]
