"""The max-rate search: doubling until a rate fails, halving when the first fails, bisection in
between, within its bounds (a fake level stands in for the servers: it passes up to a capacity)."""

from __future__ import annotations

import pytest

from benchmarks.load import search
from benchmarks.load.clients import Endpoints
from benchmarks.load.metrics import SLO
from benchmarks.load.runner import RunSettings
from benchmarks.load.search import RateSearch, SearchBounds


class FakeSource:
    def take(self, count: int) -> list:
        return [None] * count


def fake_level(capacity: float):
    async def run_level(settings, level, requests, targets):
        p99 = 100.0 if level.rate <= capacity else 5000.0
        row = {"requests": len(requests), "completed": len(requests), "ttft_ms": {"p99": p99}}
        return {"level": level.describe(), "targets": {targets[0]: row}}
    return run_level


async def search_with(monkeypatch, capacity: float, **bounds) -> dict:
    monkeypatch.setattr(search, "run_level", fake_level(capacity))
    settings = RunSettings(Endpoints("m", "http://127.0.0.1:1"), SLO(1.0, 1.0), 60.0, 0)
    return await RateSearch(settings, SearchBounds(**bounds), "direct", FakeSource()).run()


@pytest.mark.parametrize("capacity, rates, answer", [
    (5.0, [1, 2, 4, 8, 6, 5], 5.0),     # doubles to a failure, then bisects
    (0.6, [1, 0.5, 0.75, 0.625], 0.5),  # halves when the first rate fails
])
async def test_search_brackets_then_bisects(monkeypatch, capacity, rates, answer):
    result = await search_with(monkeypatch, capacity, refine_steps=2)
    assert [trial["rate"] for trial in result["levels"]] == rates
    assert result["max_rate"] == answer


async def test_search_stops_at_its_max_rate(monkeypatch):
    result = await search_with(monkeypatch, 100.0, max_rate=8.0)
    assert result["max_rate"] == 8.0 and result["first_failing_rate"] is None


def test_levels_grow_with_the_rate_but_not_below_the_minimum():
    bounds = SearchBounds(level_seconds=8.0, min_requests=10)
    assert bounds.requests_at(0.5) == 10 and bounds.requests_at(4.0) == 32
