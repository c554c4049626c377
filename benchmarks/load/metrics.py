"""What one streamed request measured (a Sample), and what a level of them adds up to: TTFT, TPOT,
inter-token and end-to-end latency (mean, p50, p90, p99), request and token throughput, errors
(503s apart) and goodput at the stated SLOs - the figures `vllm bench serve` reports."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 99)
SERVICE_UNAVAILABLE = 503


@dataclass
class Sample:
    """One request: when its tokens came (seconds after it was sent), how many there were, and how
    it failed, if it did (`status`: the HTTP status; a WebSocket `overloaded` counts as 503)."""

    target: str
    token_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    e2e: float | None = None
    status: int | None = None
    error: str | None = None
    route: str | None = None

    @property
    def completed(self) -> bool:
        return self.error is None and self.e2e is not None and bool(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0]

    @property
    def inter_token_latencies(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.token_times, self.token_times[1:])]

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first; None for a one-token answer. An event may carry
        several tokens (or the text of several), so this divides by tokens, not by events."""
        tokens = max(self.output_tokens, len(self.token_times))
        return None if tokens < 2 else (self.e2e - self.ttft) / (tokens - 1)


@dataclass(frozen=True, slots=True)
class SLO:
    ttft: float
    tpot: float

    def met_by(self, sample: Sample) -> bool:
        return sample.completed and sample.ttft <= self.ttft and (sample.tpot is None or sample.tpot <= self.tpot)


def percentile(values: list[float], percent: float) -> float:
    """Linear interpolation between the closest ranks, as numpy.percentile; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = percent / 100 * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def distribution_ms(values: list[float]) -> dict[str, float]:
    """Mean and percentiles of seconds, in milliseconds."""
    summary = {"mean": 1000 * statistics.fmean(values) if values else math.nan}
    summary.update({f"p{percent}": 1000 * percentile(values, percent) for percent in PERCENTILES})
    return summary


def summarise(samples: list[Sample], duration: float, slo: SLO) -> dict:
    """One target at one level; `duration`: from the first request sent to the last one ended."""
    done = [sample for sample in samples if sample.completed]
    failed = [sample for sample in samples if not sample.completed]
    output_tokens = sum(sample.output_tokens for sample in done)
    return {
        "requests": len(samples),
        "completed": len(done),
        "errors_503": sum(sample.status == SERVICE_UNAVAILABLE for sample in failed),
        "errors_other": sum(sample.status != SERVICE_UNAVAILABLE for sample in failed),
        "error_kinds": dict(Counter(sample.error or "unfinished" for sample in failed)),
        "duration_s": duration,
        "request_throughput": len(done) / duration,
        "output_token_throughput": output_tokens / duration,
        "goodput_rps": sum(slo.met_by(sample) for sample in done) / duration,
        "ttft_ms": distribution_ms([sample.ttft for sample in done]),
        "tpot_ms": distribution_ms([sample.tpot for sample in done if sample.tpot is not None]),
        "itl_ms": distribution_ms([gap for sample in done for gap in sample.inter_token_latencies]),
        "e2e_ms": distribution_ms([sample.e2e for sample in done]),
        "routes": dict(Counter(sample.route for sample in done if sample.route)),
    }


def paired_ttft_differences(samples: list[Sample], group_size: int, target: str, baseline: str) -> list[float]:
    """Per group of `group_size` consecutive samples (one per target, on requests of one shape),
    `target`'s TTFT minus `baseline`'s (seconds), where both completed."""
    differences = []
    for start in range(0, len(samples) - group_size + 1, group_size):
        by_target = {sample.target: sample for sample in samples[start:start + group_size]}
        pair = by_target.get(target), by_target.get(baseline)
        if all(sample is not None and sample.completed for sample in pair):
            differences.append(pair[0].ttft - pair[1].ttft)
    return differences


def p99_ttft_within(summary: dict, limit_seconds: float) -> bool:
    """Whether a level sustained its load: every request answered and p99 TTFT within the limit."""
    return summary["completed"] == summary["requests"] and summary["ttft_ms"]["p99"] <= 1000 * limit_seconds
