"""A tenant's limits, in process and in a real Redis, behave the same: buckets refuse when empty
and refill with time, a reservation takes all or nothing, settling gives back what was not used,
concurrency never exceeds its limit and its leases expire, and the refusal says why and for how
long. In Redis, replicas in separate processes share the limits without overshooting them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from router.gateway.limits import (
    LIMITED_REQUESTS,
    Limiter,
    LimitState,
    LimitsUnavailable,
    MemoryLimiter,
    RateLimited,
    RedisLimiter,
    format_reset,
)
from router.gateway.redis_store import FailureMode, RedisStore
from router.gateway.tenants import Budget, Tenant, TenantPolicy
from tests.servers import REPO_ROOT

# Redis's clock is real: waits there are real, so limits are sized to refill in tenths of seconds.
SLACK_SECONDS = 0.05


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """A limiter under test and how time passes for it: a fake clock in process, real sleeps for
    Redis's buckets and leases. The fake clock also places budget periods, in both."""

    make: Callable[..., Limiter]
    clock: FakeClock
    in_redis: bool

    async def wait(self, seconds: float) -> None:
        self.clock.now += seconds
        if self.in_redis:
            await asyncio.sleep(seconds)


@pytest.fixture(params=["memory", "redis"])
async def backend(request) -> AsyncIterator[Backend]:
    clock = FakeClock()
    if request.param == "memory":
        yield Backend(lambda lease_seconds=900.0: MemoryLimiter(clock, lease_seconds), clock, in_redis=False)
        return
    server = request.getfixturevalue("redis_server")
    store = RedisStore(pooled(server.url), timeout_seconds=2.0, prefix=request.getfixturevalue("redis_prefix"))
    limiters = []

    def make(lease_seconds: float = 900.0) -> RedisLimiter:
        limiters.append(RedisLimiter(store, FailureMode.CLOSED, lease_seconds, clock))
        return limiters[-1]

    yield Backend(make, clock, in_redis=True)
    for limiter in limiters:
        await limiter.close()
    await store.close()


def pooled(url: str) -> str:
    """The URL with a connection pool for a burst of 200 requests (redis-py's default is 100,
    and a request beyond it fails instead of waiting)."""
    return url + "?max_connections=1000"


def tenant(**limits) -> Tenant:
    return Tenant("acme", TenantPolicy(**limits))


async def refused(limiter: Limiter, who: Tenant, tokens: int) -> RateLimited:
    with pytest.raises(RateLimited) as refusal:
        await limiter.admit(who, tokens)
    return refusal.value


async def test_the_requests_bucket_refuses_when_empty_and_refills(backend):
    limiter, acme = backend.make(), tenant(requests_per_minute=60)
    for _ in range(60):
        await limiter.admit(acme, 10)

    refusal = await refused(limiter, acme, 10)

    assert refusal.limit == "requests" and 0 < refusal.retry_after_seconds <= 1
    assert refusal.message.startswith("Rate limit reached for tenant acme on requests per min (RPM): Limit 60, "
                                      "Remaining 0, Requested 1. Please try again in ")
    assert refusal.state.limit_requests == 60 and refusal.state.remaining_requests == 0
    await backend.wait(refusal.retry_after_seconds + SLACK_SECONDS)
    await limiter.admit(acme, 10)


async def test_the_tokens_bucket_takes_whole_reservations_and_refills(backend):
    limiter, acme = backend.make(), tenant(tokens_per_minute=6000)  # 100 tokens a second
    await limiter.admit(acme, 5990)

    refusal = await refused(limiter, acme, 20)

    assert refusal.limit == "tokens" and 0.05 < refusal.retry_after_seconds <= 0.1
    assert "on tokens per min (TPM): Limit 6000, Remaining 10, Requested 20." in refusal.message
    await backend.wait(refusal.retry_after_seconds + SLACK_SECONDS)
    admission = await limiter.admit(acme, 20)
    assert admission.state.remaining_tokens < 10


async def test_a_reservation_beyond_the_limit_is_too_large_whatever_the_wait(backend):
    limiter = backend.make()

    too_many_tokens = await refused(limiter, tenant(tokens_per_minute=6000), 6001)
    beyond_budget = await refused(limiter, tenant(budget=Budget(1000, "day")), 1001)

    assert too_many_tokens.limit == beyond_budget.limit == "request_too_large"
    assert too_many_tokens.retry_after_seconds == 0
    assert too_many_tokens.message == ("Request too large for tokens per min (TPM): Limit 6000, Requested 6001. "
                                       "Lower max_tokens or shorten the prompt.")
    assert beyond_budget.message.startswith("Request too large for the token budget per day: Limit 1000, "
                                            "Requested 1001.")
    assert LIMITED_REQUESTS.labels("acme", "request_too_large")._value.get() >= 2


async def test_a_refusal_takes_nothing(backend):
    limiter, acme = backend.make(), tenant(requests_per_minute=60, tokens_per_minute=6000)
    await limiter.admit(acme, 6000)

    await refused(limiter, acme, 100)
    await refused(limiter, acme, 100)

    admission = await limiter.admit(acme, 0)
    assert admission.state.remaining_requests == 58


async def test_the_budget_counts_real_use_and_renews_with_its_period(backend):
    limiter, acme = backend.make(), tenant(budget=Budget(1000, "day"))
    first = await limiter.admit(acme, 600)

    refusal = await refused(limiter, acme, 500)

    day_end = Budget(1000, "day").window(backend.clock.now)[1]
    assert refusal.limit == "budget"
    assert abs(refusal.retry_after_seconds - (day_end - backend.clock.now)) < 5
    assert refusal.message.startswith("Token budget of tenant acme reached for this day (UTC): Limit 1000, "
                                      "Used 600, Requested 500. It renews in ")
    await limiter.settle(first, used_tokens=100)
    await limiter.admit(acme, 900)
    await refused(limiter, acme, 1)
    backend.clock.now = day_end + 1
    await limiter.admit(acme, 1000)


async def test_settling_returns_unused_tokens_and_takes_overuse(backend):
    limiter, policy = backend.make(), TenantPolicy(tokens_per_minute=60000)  # 1000 tokens a second
    generous = await limiter.admit(Tenant("generous", policy), 60000)
    await limiter.settle(generous, used_tokens=10000)

    assert (await limiter.admit(Tenant("generous", policy), 50000)).state.remaining_tokens < 100

    short = await limiter.admit(Tenant("short", policy), 1000)
    await limiter.settle(short, used_tokens=41000)
    refusal = await refused(limiter, Tenant("short", policy), 30000)
    assert refusal.state.remaining_tokens < 19100 and refusal.retry_after_seconds > 10


async def test_settling_twice_counts_once(backend):
    limiter, acme = backend.make(), tenant(max_concurrent=1, budget=Budget(1000, "day"))
    admission = await limiter.admit(acme, 1000)

    await limiter.settle(admission, used_tokens=500)
    await limiter.settle(admission, used_tokens=500)

    await limiter.admit(acme, 500)
    assert (await refused(limiter, acme, 1)).limit in {"budget", "concurrency"}
    assert admission.settled


async def test_concurrency_never_exceeds_its_limit(backend):
    limiter, acme = backend.make(), tenant(max_concurrent=3)
    in_flight = most_in_flight = admitted = 0

    async def request() -> None:
        nonlocal in_flight, most_in_flight, admitted
        try:
            admission = await limiter.admit(acme, 1)
        except RateLimited as refusal:
            assert refusal.limit == "concurrency" and refusal.retry_after_seconds == 1
            return
        in_flight += 1
        admitted += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            await asyncio.sleep(0.01)
        finally:
            in_flight -= 1
            await limiter.settle(admission, used_tokens=1)

    await asyncio.gather(*(request() for _ in range(200)))

    assert 1 <= most_in_flight <= 3 and admitted >= 3
    assert (await limiter.admit(acme, 1)).lease_id is not None


async def test_a_lease_expires_unless_refreshed(backend):
    limiter, acme = backend.make(lease_seconds=0.3), tenant(max_concurrent=2)
    held = await limiter.admit(acme, 1)
    abandoned = await limiter.admit(acme, 1)  # never settled, as by a replica killed with -9

    await backend.wait(0.2)
    await limiter.refresh(held)
    await backend.wait(0.2)
    await limiter.refresh(abandoned)  # too late: its slot is free

    admitted = await limiter.admit(acme, 1)
    refusal = await refused(limiter, acme, 1)
    assert refusal.limit == "concurrency" and "Limit 2, In flight 2." in refusal.message
    await limiter.settle(admitted, used_tokens=1)
    await limiter.admit(acme, 1)


async def test_the_state_reads_as_openai_headers(backend):
    limiter = backend.make()

    admission = await limiter.admit(tenant(requests_per_minute=60, tokens_per_minute=6000), 1000)
    unlimited = await limiter.admit(Tenant("free", TenantPolicy(models=frozenset({"auto"}))), 1000)
    only_concurrency = await limiter.admit(tenant(max_concurrent=5), 1000)

    assert admission.state.headers() == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "5000",
        "x-ratelimit-reset-tokens": "10s",
    }
    assert unlimited.state == LimitState() and unlimited.lease_id is None
    assert only_concurrency.state.headers() == {}


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.02, "20ms"), (0.0201, "21ms"), (1, "1s"), (1.5, "1.5s"), (90.5, "1m30.5s"), (360, "6m0s"),
    (3600, "1h0m0s"), (3725.25, "1h2m5.25s"), (-3, "0s"),
])
def test_resets_read_as_openai_durations(seconds, text):
    assert format_reset(seconds) == text


def test_a_negative_remainder_reads_as_zero():
    assert LimitState(limit_tokens=10, remaining_tokens=0, reset_tokens_seconds=72).headers() == {
        "x-ratelimit-limit-tokens": "10", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m12s"}


@pytest.mark.parametrize("mode", [FailureMode.OPEN, FailureMode.CLOSED])
async def test_an_unreachable_redis_fails_open_or_closed_fast(mode):
    store = RedisStore("redis://127.0.0.1:1/0", timeout_seconds=0.2)
    limiter = RedisLimiter(store, mode)
    acme = tenant(requests_per_minute=60)
    started = time.monotonic()
    try:
        free = await limiter.admit(Tenant("free", TenantPolicy()), 10)  # never asks Redis
        if mode == FailureMode.OPEN:
            admission = await limiter.admit(acme, 10)
            await limiter.settle(admission, used_tokens=10)
            assert admission.unmetered and admission.settled and admission.state == LimitState()
        else:
            with pytest.raises(LimitsUnavailable, match="the limits of tenant acme cannot be checked"):
                await limiter.admit(acme, 10)
    finally:
        await limiter.close()
        await store.close()
    assert not free.unmetered
    assert time.monotonic() - started < 1


async def test_a_settlement_outlives_the_cancellation_of_its_caller(redis_server, redis_prefix):
    store = RedisStore(pooled(redis_server.url), timeout_seconds=2.0, prefix=redis_prefix)
    limiter, acme = RedisLimiter(store, FailureMode.CLOSED), tenant(max_concurrent=1)
    try:
        admission = await limiter.admit(acme, 1)
        settling = asyncio.ensure_future(limiter.settle(admission, used_tokens=1))
        await asyncio.sleep(0)
        settling.cancel()
        await limiter.close()
        await limiter.admit(acme, 1)
    finally:
        await store.close()


async def test_every_key_in_redis_expires(redis_server, redis_prefix):
    store = RedisStore(redis_server.url, timeout_seconds=2.0, prefix=redis_prefix)
    limiter = RedisLimiter(store, FailureMode.CLOSED, lease_seconds=60)
    acme = tenant(requests_per_minute=60, tokens_per_minute=6000, max_concurrent=2, budget=Budget(1000, "hour"))
    try:
        await limiter.admit(acme, 100)
        await limiter.settle(await limiter.admit(acme, 100), used_tokens=300)
        keys = await store.client.keys(redis_prefix + "*")
        lifetimes = [await store.client.ttl(key) for key in keys]
    finally:
        await limiter.close()
        await store.close()

    assert len(keys) == 4
    assert all(0 < lifetime <= 3600 + 60 for lifetime in lifetimes)


def test_replicas_in_separate_processes_share_the_limits(redis_server, redis_prefix):
    """Three processes, each with 300 requests at once for a tenant limited in concurrency and 300
    for one limited in tokens per minute: none overshoots."""
    command = [sys.executable, "-m", "tests.router.gateway.limits_replica", pooled(redis_server.url), redis_prefix]
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    replicas = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=environment)
                for _ in range(3)]
    reports = [json.loads(replica.communicate(timeout=60)[0]) for replica in replicas]
    assert all(replica.returncode == 0 for replica in replicas)

    import redis

    client = redis.Redis.from_url(redis_server.url)
    most_in_flight = int(client.get(redis_prefix + "most_in_flight"))
    admitted_tokens = int(client.get(redis_prefix + "admitted_tokens"))
    window = max(report["ended"] for report in reports) - min(report["started"] for report in reports)
    assert 1 <= most_in_flight <= 4
    assert sum(report["admitted_concurrent"] for report in reports) >= 4
    assert 6000 <= admitted_tokens <= 6000 + 100 * window
