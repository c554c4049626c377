"""StartupTimings: phases are exclusive (a nested one is not counted twice), every phase is
reported, and what none covers is `other`. A fake clock: nothing here depends on real time."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from runtime.engine.startup import (
    PHASES,
    StartupTimings,
    describe_startup,
    seconds_since_process_start,
)


def fake_clock(*readings: float) -> Callable[[], float]:
    """A clock that reads `readings`, one per call."""
    return iter(readings).__next__


def test_a_nested_phase_is_not_counted_in_the_outer_one():
    # warm_up from 10 to 15, a kernel built inside it from 11 to 13.
    timings = StartupTimings(fake_clock(10.0, 11.0, 13.0, 15.0))
    with timings.phase("warm_up"), timings.phase("kernels"):
        pass
    assert timings.seconds["warm_up"] == 3.0
    assert timings.seconds["kernels"] == 2.0


def test_every_phase_is_reported_and_other_makes_up_the_total():
    timings = StartupTimings()
    timings.record("imports", 2.0)
    timings.record("kernels", 0.25)
    timings.record("kernels", 0.25)
    breakdown = timings.breakdown(4.0)
    assert list(breakdown) == [*PHASES, "other"]
    assert breakdown["kernels"] == 0.5
    assert breakdown["weight_load"] == 0.0
    assert breakdown["other"] == 1.5
    assert describe_startup(breakdown).startswith("ready in 4.000s: imports 2.000s, checkpoint 0.000s")


def test_the_process_started_before_now():
    first = seconds_since_process_start()
    assert 0 < first <= seconds_since_process_start()


def test_phases_still_count_when_the_work_fails():
    timings = StartupTimings(fake_clock(0.0, 1.0))
    with pytest.raises(RuntimeError), timings.phase("weight_load"):
        raise RuntimeError("checkpoint missing")
    assert timings.seconds["weight_load"] == 1.0
