"""Token metering: running totals that never decrease, one ledger record and one count of the
counters per request. (A stream's usage, read from its bytes: test_stream_usage.py.)"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from router.gateway.ledger import SQLiteLedger, UsageTotal
from router.gateway.metering import Meter


def counted(tenant: str, model: str) -> tuple[float, float, float]:
    """gateway_tokens_total (prompt, completion) and gateway_requests_total{outcome="ok"}."""
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"tenant": tenant, "model": model, **labels}) or 0.0

    return (value("gateway_tokens_total", kind="prompt"), value("gateway_tokens_total", kind="completion"),
            value("gateway_requests_total", outcome="ok"))


def run_with_ledger(tmp_path, scenario):
    async def with_ledger():
        ledger = SQLiteLedger(tmp_path / "usage.db")
        try:
            return await scenario(ledger), await ledger.totals(None, 0, 2**40)
        finally:
            await ledger.close()

    return asyncio.run(with_ledger())


def test_counts_never_decrease():
    meter = Meter(ledger=None, request_id="r1", tenant="acme", endpoint="completions", model="small")
    meter.observe(10, 4)
    meter.observe_usage({"prompt_tokens": 10, "completion_tokens": 2})
    meter.observe_usage(None, model="large-70b")
    assert (meter.prompt_tokens, meter.completion_tokens, meter.model) == (10, 4, "large-70b")


def test_a_request_is_committed_once_to_the_ledger_and_the_counters(tmp_path):
    before = counted("commit-once", "small-7b")

    async def scenario(ledger):
        meter = Meter(ledger, "r1", "commit-once", "chat.completions", "small")
        meter.observe(12, 3, "small-7b")
        first, again, concurrently = await asyncio.gather(meter.commit("ok"), meter.commit("failed"),
                                                          meter.commit("ok"))
        later = await meter.commit("cancelled")
        assert meter.committed
        return first, [again, concurrently, later]

    (first, others), totals = run_with_ledger(tmp_path, scenario)
    assert (first.prompt_tokens, first.completion_tokens, first.outcome, first.model) == (12, 3, "ok", "small-7b")
    assert others == [first, first, first]
    assert totals == [UsageTotal("commit-once", "small-7b", 1, 12, 3)]
    after = counted("commit-once", "small-7b")
    assert [now - then for now, then in zip(after, before, strict=True)] == [12, 3, 1]


def test_an_unknown_outcome_is_refused_with_the_allowed_ones(tmp_path):
    async def scenario(ledger):
        meter = Meter(ledger, "r3", "acme", "completions", "small")
        with pytest.raises(ValueError, match="'done' is not one of ok, cancelled, failed, cache_hit, refused"):
            await meter.commit("done")
        return meter.committed

    committed, totals = run_with_ledger(tmp_path, scenario)
    assert committed is False
    assert totals == []
