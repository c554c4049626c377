"""Token metering: a stream's usage read from its bytes however they are cut, one ledger record
and one count of the counters per request, and a stream cut short billed for what it reported."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from router.gateway.ledger import SQLiteLedger, UsageTotal
from router.gateway.metering import Meter
from serving.sse import DONE_EVENT, encode_event


def chunk(content: str, usage: dict | None, model: str = "small-7b") -> bytes:
    return encode_event({"id": "cmpl-1", "object": "chat.completion.chunk", "model": model,
                         "choices": [{"index": 0, "delta": {"content": content}}], "usage": usage})


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# A stream with continuous usage (running totals), then its final usage-only chunk and [DONE].
STREAM = b"".join([chunk("Hel", usage(12, 1)), b": keep-alive\n\n", chunk("lo", usage(12, 2)),
                   chunk("!", usage(12, 3)), encode_event({"model": "small-7b", "choices": [], "usage": usage(12, 3)}),
                   DONE_EVENT])


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


@pytest.mark.parametrize("cut", [1, 3, 7, 64, len(STREAM)])
def test_usage_is_read_from_a_stream_cut_anywhere(cut):
    meter = Meter(ledger=None, request_id="r1", tenant="acme", endpoint="chat.completions", model="small")
    for offset in range(0, len(STREAM), cut):
        meter.observe_sse_chunk(STREAM[offset:offset + cut])
    assert (meter.prompt_tokens, meter.completion_tokens, meter.model) == (12, 3, "small-7b")


def test_chunks_without_usage_leave_the_counts_alone():
    meter = Meter(ledger=None, request_id="r1", tenant="acme", endpoint="chat.completions", model="small")
    meter.observe_sse_chunk(chunk("a", usage(5, 1)))
    meter.observe_sse_chunk(chunk("b", None) + encode_event({"choices": []}) + b"data: {not json, \"usage\"\n\n")
    meter.observe_sse_chunk(encode_event({"usage": {"prompt_tokens": "many"}}))
    assert (meter.prompt_tokens, meter.completion_tokens) == (5, 1)


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
        meter.observe_sse_chunk(STREAM)
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


def test_a_cancelled_stream_bills_what_it_reported(tmp_path):
    async def scenario(ledger):
        meter = Meter(ledger, "r2", "acme", "chat.completions", "small")
        reported = len(chunk("Hel", usage(12, 1)) + b": keep-alive\n\n")
        meter.observe_sse_chunk(STREAM[:reported + 40])  # the client left in the middle of the next event
        return await meter.commit("cancelled")

    committed, totals = run_with_ledger(tmp_path, scenario)
    assert (committed.outcome, committed.prompt_tokens, committed.completion_tokens) == ("cancelled", 12, 1)
    assert totals == [UsageTotal("acme", "small-7b", 1, 12, 1)]
    assert REGISTRY.get_sample_value("gateway_requests_total",
                                     {"tenant": "acme", "model": "small-7b", "outcome": "cancelled"}) >= 1


def test_an_unknown_outcome_is_refused_with_the_allowed_ones(tmp_path):
    async def scenario(ledger):
        meter = Meter(ledger, "r3", "acme", "completions", "small")
        with pytest.raises(ValueError, match="'done' is not one of ok, cancelled, failed, cache_hit, refused"):
            await meter.commit("done")
        return meter.committed

    committed, totals = run_with_ledger(tmp_path, scenario)
    assert committed is False
    assert totals == []
