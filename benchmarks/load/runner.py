"""Load levels and how requests arrive: Poisson at a rate (open loop), all at once (rate inf), or
a fixed number of clients each sending its next request when the previous one ends (closed loop).
A level runs on one target at a time, or on all targets interleaved (request i to target i mod n)
so that machine noise hits them alike; either way it is bounded in time."""

from __future__ import annotations

import asyncio
import math
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from benchmarks.load.clients import Clients, Endpoints, prefix_cache_counters
from benchmarks.load.metrics import SLO, Sample, summarise
from benchmarks.load.workload import Request

IDLE_MAX_TOKENS = 4


@dataclass(frozen=True, slots=True)
class Level:
    """Poisson arrivals at `rate` requests/s (math.inf: all at once), or `concurrency` clients."""

    rate: float | None = None
    concurrency: int | None = None

    def describe(self) -> str:
        if self.concurrency is not None:
            return f"concurrency {self.concurrency}"
        return "all at once" if math.isinf(self.rate) else f"Poisson {self.rate:g}/s"

    def as_json(self) -> dict:
        return {"rate": None if self.rate is None else str(self.rate) if math.isinf(self.rate) else self.rate,
                "concurrency": self.concurrency}


@dataclass(frozen=True, slots=True)
class RunSettings:
    endpoints: Endpoints
    slo: SLO
    level_timeout: float
    seed: int


async def run_level(settings: RunSettings, level: Level, requests: list[Request], targets: tuple[str, ...]) -> dict:
    """Every request of `requests` once, request i to targets[i % len(targets)]; a summary per
    target, and the predictor's prefix-cache hit rate over the level."""
    samples = [Sample(targets[index % len(targets)]) for index in range(len(requests))]
    async with AsyncExitStack() as stack:
        clients = await Clients.open(stack, settings.endpoints, targets)
        hits_before, queries_before = await prefix_cache_counters(clients.http, settings.endpoints.predictor_url)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(settings.level_timeout):
                await _send_all(clients, level, requests, samples, random.Random(settings.seed))
        except TimeoutError:
            _mark_unfinished(samples, f"not done in {settings.level_timeout:g} s")
        duration = time.perf_counter() - started
        hits, queries = await prefix_cache_counters(clients.http, settings.endpoints.predictor_url)
    summaries = {target: summarise([sample for sample in samples if sample.target == target], duration, settings.slo)
                 for target in targets}
    hit_rate = (hits - hits_before) / (queries - queries_before) if queries > queries_before else math.nan
    return {"level": level.describe(), **level.as_json(), "targets": summaries, "prefix_cache_hit_rate": hit_rate}


async def _send_all(clients: Clients, level: Level, requests: list[Request], samples: list[Sample],
                    rng: random.Random) -> None:
    # A TaskGroup: when the level times out, the requests still streaming are cancelled with it.
    async with asyncio.TaskGroup() as group:
        if level.concurrency is not None:
            pending = iter(zip(requests, samples))
            for _ in range(level.concurrency):
                group.create_task(_closed_loop_client(clients, pending))
            return
        for request, sample in zip(requests, samples):
            group.create_task(clients.send(request, sample))
            if not math.isinf(level.rate):
                await asyncio.sleep(rng.expovariate(level.rate))


async def _closed_loop_client(clients: Clients, pending) -> None:
    """Sends the next pending request (the iterator is shared by all clients) when its last ends."""
    for request, sample in pending:
        await clients.send(request, sample)


def _mark_unfinished(samples: list[Sample], reason: str) -> None:
    for sample in samples:
        if sample.e2e is None:
            sample.error = reason


async def run_idle(endpoints: Endpoints, groups: list[list[Request]], targets: tuple[str, ...]) -> list[Sample]:
    """One request at a time, each for a few tokens: what each hop costs alone. Each group holds
    one request per target, of equal prompt and output lengths; the order of the targets turns
    from one group to the next, so that none always follows another."""
    samples = []
    async with AsyncExitStack() as stack:
        clients = await Clients.open(stack, endpoints, targets)
        for index, group in enumerate(groups):
            for turn, request in enumerate(group):
                sample = Sample(targets[(index + turn) % len(targets)])
                await clients.send(request, sample, IDLE_MAX_TOKENS)
                samples.append(sample)
    return samples
