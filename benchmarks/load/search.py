"""The highest Poisson rate a target sustains with p99 TTFT under a limit: rates double (or halve,
when the first fails) until one passes and one fails, then bisection narrows the gap. Every
level is bounded (a few seconds of arrivals, then a short drain) and so is the whole search."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from benchmarks.load.metrics import p99_ttft_within
from benchmarks.load.runner import Level, RunSettings, run_level
from benchmarks.load.workload import RequestSource

# How long a level's last requests may take after its arrivals end: one slower than this has
# failed the TTFT limit anyway.
DRAIN_SECONDS = 10.0
MIN_RATE = 0.25


@dataclass(frozen=True, slots=True)
class SearchBounds:
    ttft_p99_limit: float = 1.0
    start_rate: float = 1.0
    max_rate: float = 64.0
    level_seconds: float = 8.0
    min_requests: int = 10
    refine_steps: int = 2
    time_budget: float = 80.0

    def requests_at(self, rate: float) -> int:
        return max(self.min_requests, round(rate * self.level_seconds))


class RateSearch:
    """One target's search."""

    def __init__(self, settings: RunSettings, bounds: SearchBounds, target: str, source: RequestSource) -> None:
        self.settings = dataclasses.replace(settings, level_timeout=bounds.level_seconds + DRAIN_SECONDS)
        self.bounds = bounds
        self.target = target
        self.source = source
        self.trials: list[dict] = []
        self.deadline = time.monotonic() + bounds.time_budget

    async def run(self) -> dict:
        passed, failed = await self._bracket()
        for _ in range(self.bounds.refine_steps):
            if passed is None or failed is None or self._out_of_time():
                break
            middle = (passed + failed) / 2
            if await self._sustains(middle):
                passed = middle
            else:
                failed = middle
        return {"target": self.target, "ttft_p99_limit_s": self.bounds.ttft_p99_limit, "max_rate": passed,
                "first_failing_rate": failed, "out_of_time": self._out_of_time(), "levels": self.trials}

    async def _bracket(self) -> tuple[float | None, float | None]:
        """A rate that passes and a higher one that fails, as far as the bounds allow."""
        passed = failed = None
        rate = self.bounds.start_rate
        while MIN_RATE <= rate <= self.bounds.max_rate and not self._out_of_time():
            if await self._sustains(rate):
                passed = rate
                if failed is not None:
                    break
                rate *= 2
            else:
                failed = rate
                if passed is not None:
                    break
                rate /= 2
        return passed, failed

    async def _sustains(self, rate: float) -> bool:
        requests = self.source.take(self.bounds.requests_at(rate))
        result = await run_level(self.settings, Level(rate=rate), requests, (self.target,))
        summary = result["targets"][self.target]
        sustained = p99_ttft_within(summary, self.bounds.ttft_p99_limit)
        self.trials.append({"rate": rate, "sustained": sustained, **result})
        print(f"  {self.target}: Poisson {rate:g}/s, {summary['completed']}/{summary['requests']} done, "
              f"TTFT p99 {summary['ttft_ms']['p99']:.0f} ms -> {'pass' if sustained else 'fail'}", flush=True)
        return sustained

    def _out_of_time(self) -> bool:
        return time.monotonic() > self.deadline
