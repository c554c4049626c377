"""The load harness's metric math: percentiles as numpy computes them, time per output token,
goodput at the SLOs, and errors with 503s counted apart."""

from __future__ import annotations

import math

import pytest

from benchmarks.load.metrics import SLO, Sample, paired_ttft_differences, percentile, summarise


def streamed(token_times: list[float], output_tokens: int | None = None) -> Sample:
    return Sample("direct", token_times=token_times, output_tokens=output_tokens or len(token_times),
                  e2e=token_times[-1])


def test_percentile_interpolates_between_ranks():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(value) for value in range(1, 102)], 99) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_tpot_divides_the_time_after_the_first_token_by_the_tokens_after_it():
    assert streamed([0.1, 0.2, 0.3, 0.5]).tpot == pytest.approx(0.4 / 3)
    # One event may carry several tokens: the usage count decides.
    assert streamed([0.1, 0.5], output_tokens=5).tpot == pytest.approx(0.1)
    assert streamed([0.1]).tpot is None


def test_goodput_counts_requests_meeting_both_slos_per_second():
    fast = streamed([0.1, 0.2, 0.3])
    slow_first_token = streamed([3.0, 3.1])
    slow_tokens = streamed([0.1, 1.1, 2.1])
    summary = summarise([fast, slow_first_token, slow_tokens], duration=2.0, slo=SLO(ttft=1.0, tpot=0.5))
    assert summary["goodput_rps"] == 0.5
    assert summary["request_throughput"] == 1.5
    assert summary["output_token_throughput"] == 4.0
    assert summary["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert summary["e2e_ms"]["mean"] == pytest.approx(1000 * (0.3 + 3.1 + 2.1) / 3)


def test_errors_count_503s_apart_and_stay_out_of_the_latencies():
    overloaded = Sample("router", status=503, error="HTTP 503")
    broken = Sample("router", error="ReadError")
    cut_off = Sample("router", token_times=[0.2])  # cancelled mid-stream: no end time
    summary = summarise([streamed([0.1, 0.2]), overloaded, broken, cut_off], duration=1.0, slo=SLO(1.0, 1.0))
    assert (summary["completed"], summary["errors_503"], summary["errors_other"]) == (1, 1, 2)
    assert summary["error_kinds"] == {"HTTP 503": 1, "ReadError": 1, "unfinished": 1}
    assert summary["ttft_ms"]["p99"] == pytest.approx(100.0)


def test_paired_differences_compare_the_targets_within_each_group():
    samples = [Sample("direct", [0.010], 1, 0.02), Sample("transformer", [0.012], 1, 0.02),
               Sample("transformer", [0.020], 1, 0.03), Sample("direct", [0.019], 1, 0.03),
               Sample("direct", [0.015], 1, 0.02), Sample("transformer", [], 0, None, error="refused")]
    differences = paired_ttft_differences(samples, 2, "transformer", "direct")
    assert [round(value, 6) for value in differences] == [0.002, 0.001]
