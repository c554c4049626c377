"""Idempotent retries, the same on both backends (memory, and Redis shared by replicas): a retry
with the same body replays the stored answer, a duplicate in flight waits for it, another body is
a conflict, tenants never see each other's keys, and an unreachable Redis fails fast."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import pytest
from prometheus_client import REGISTRY

from router.gateway.idempotency import (
    IdempotencyConflict,
    IdempotencyInFlight,
    InvalidIdempotencyKey,
    MemoryIdempotencyStore,
    Proceed,
    RedisIdempotencyStore,
    Replay,
)
from router.gateway.redis_store import RedisStore, RedisUnavailable
from router.gateway.stored_response import StoredResponse, body_digest

ANSWER = StoredResponse(200, "application/json", b'{"choices":[]}', {"x-route": "small"}, 10, 4)
OTHER_ANSWER = StoredResponse(200, "application/json", b'{"choices":[1]}', {"x-route": "large"}, 10, 5)
DIGEST = body_digest({"prompt": "hi"})
OTHER_DIGEST = body_digest({"prompt": "ho"})


@pytest.fixture
def open_store(backend):
    """An async context manager that opens a store of the backend under test."""
    return partial(backend.open, MemoryIdempotencyStore, RedisIdempotencyStore)


def counted(result: str) -> float:
    return REGISTRY.get_sample_value("gateway_idempotency_total", {"result": result}) or 0.0


async def retry_after_both_complete(store, first: Proceed, second: Proceed) -> Proceed | Replay:
    """The first owner, who lost the key to the second, completes late (ignored); then the second
    completes. What a retry gets."""
    await store.complete(first, OTHER_ANSWER)
    await store.complete(second, ANSWER)
    return await store.begin("acme", "key-1", DIGEST, wait_seconds=0)


def test_a_retry_with_the_same_body_replays_the_answer(open_store):
    async def scenario():
        async with open_store() as store:
            first = await store.begin("acme", "key-1", DIGEST, wait_seconds=1)
            await store.complete(first, ANSWER)
            return first, await store.begin("acme", "key-1", DIGEST, wait_seconds=1)

    new, replayed = counted("new"), counted("replayed")
    first, retry = asyncio.run(scenario())
    assert isinstance(first, Proceed)
    assert retry == Replay(ANSWER)
    assert (counted("new"), counted("replayed")) == (new + 1, replayed + 1)


def test_another_body_under_the_same_key_is_a_conflict(open_store):
    async def scenario():
        async with open_store() as store:
            await store.begin("acme", "key-1", DIGEST, wait_seconds=1)
            with pytest.raises(IdempotencyConflict, match="another request body") as in_flight:
                await store.begin("acme", "key-1", OTHER_DIGEST, wait_seconds=1)
            return in_flight.value

    conflicts = counted("conflict")
    started = time.monotonic()
    failure = asyncio.run(scenario())
    assert time.monotonic() - started < 0.5  # a conflict does not wait for the first request
    assert "key-1" in str(failure)
    assert counted("conflict") == conflicts + 1


def test_a_duplicate_in_flight_waits_for_the_answer(open_store):
    async def scenario():
        async with open_store() as store:
            first = await store.begin("acme", "key-1", DIGEST, wait_seconds=1)
            duplicate = asyncio.create_task(store.begin("acme", "key-1", DIGEST, wait_seconds=5))
            await asyncio.sleep(0.1)
            still_waiting = not duplicate.done()
            await store.complete(first, ANSWER)
            return still_waiting, await duplicate

    waited = counted("waited")
    still_waiting, duplicate = asyncio.run(scenario())
    assert still_waiting
    assert duplicate == Replay(ANSWER)
    assert counted("waited") == waited + 1


def test_an_abandoned_request_hands_the_key_to_the_waiter(open_store):
    async def scenario():
        async with open_store() as store:
            first = await store.begin("acme", "key-1", DIGEST, wait_seconds=1)
            duplicate = asyncio.create_task(store.begin("acme", "key-1", DIGEST, wait_seconds=5))
            await asyncio.sleep(0.05)
            await store.abandon(first)
            second = await duplicate
            with pytest.raises(IdempotencyInFlight):
                await store.begin("acme", "key-1", DIGEST, wait_seconds=0)
            return second, await retry_after_both_complete(store, first, second)

    second, retry = asyncio.run(scenario())
    assert isinstance(second, Proceed)
    assert retry == Replay(ANSWER)


def test_of_several_waiters_one_takes_an_abandoned_key_and_the_others_get_its_answer(open_store):
    async def scenario():
        async with open_store() as store:
            first = await store.begin("acme", "key-1", DIGEST, wait_seconds=1)
            waiters = [asyncio.create_task(store.begin("acme", "key-1", DIGEST, wait_seconds=5)) for _ in range(3)]
            await asyncio.sleep(0.05)
            await store.abandon(first)
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            await store.complete(done.pop().result(), ANSWER)
            return await asyncio.gather(*waiters)

    claims = asyncio.run(scenario())
    assert sorted(type(claim).__name__ for claim in claims) == ["Proceed", "Replay", "Replay"]
    assert [claim for claim in claims if isinstance(claim, Replay)] == [Replay(ANSWER)] * 2


def test_abandon_after_complete_keeps_the_answer(open_store):
    async def scenario():
        async with open_store() as store:
            first = await store.begin("acme", "key-1", DIGEST, wait_seconds=1)
            await store.complete(first, ANSWER)
            await store.abandon(first)
            return await store.begin("acme", "key-1", DIGEST, wait_seconds=0)

    assert asyncio.run(scenario()) == Replay(ANSWER)


def test_a_duplicate_gives_up_after_the_wait(open_store):
    async def scenario():
        async with open_store() as store:
            await store.begin("acme", "key-1", DIGEST, wait_seconds=1)
            started = time.monotonic()
            with pytest.raises(IdempotencyInFlight, match="still in progress") as failure:
                await store.begin("acme", "key-1", DIGEST, wait_seconds=0.3)
            return time.monotonic() - started, failure.value

    in_progress = counted("in_progress")
    waited, failure = asyncio.run(scenario())
    assert 0.3 <= waited < 1.0
    assert "key-1" in str(failure)
    assert counted("in_progress") == in_progress + 1


def test_answers_expire_after_the_ttl(open_store):
    async def scenario():
        async with open_store(ttl_seconds=0.2) as store:
            await store.complete(await store.begin("acme", "key-1", DIGEST, wait_seconds=0), ANSWER)
            await asyncio.sleep(0.3)
            return await store.begin("acme", "key-1", OTHER_DIGEST, wait_seconds=0)

    assert isinstance(asyncio.run(scenario()), Proceed)


def test_a_dead_owner_frees_the_key_when_its_lease_runs_out(open_store):
    async def scenario():
        async with open_store(lease_seconds=0.2) as store:
            first = await store.begin("acme", "key-1", DIGEST, wait_seconds=0)
            second = await store.begin("acme", "key-1", DIGEST, wait_seconds=2)
            return second, await retry_after_both_complete(store, first, second)

    second, retry = asyncio.run(scenario())
    assert isinstance(second, Proceed)
    assert retry == Replay(ANSWER)


def test_tenants_never_see_each_others_keys(open_store):
    async def scenario():
        async with open_store() as store:
            await store.complete(await store.begin("acme", "key-1", DIGEST, wait_seconds=0), ANSWER)
            same_body = await store.begin("globex", "key-1", DIGEST, wait_seconds=0)
            other_body = await store.begin("acme:key", "1", OTHER_DIGEST, wait_seconds=0)
            return same_body, other_body

    same_body, other_body = asyncio.run(scenario())
    assert isinstance(same_body, Proceed)
    assert isinstance(other_body, Proceed)


@pytest.mark.parametrize("key, complaint", [
    ("", "empty"),
    ("k" * 256, "at most 255"),
    ("two words", "visible ASCII"),
    ("café", "visible ASCII"),
])
def test_malformed_keys_are_refused_with_what_is_allowed(open_store, key, complaint):
    async def scenario():
        async with open_store() as store:
            await store.begin("acme", key, DIGEST, wait_seconds=0)

    with pytest.raises(InvalidIdempotencyKey, match=complaint):
        asyncio.run(scenario())


def test_memory_drops_the_least_recently_used_answer():
    async def scenario():
        store = MemoryIdempotencyStore(max_entries=2)
        for key in ("a", "b"):
            await store.complete(await store.begin("acme", key, DIGEST, wait_seconds=0), ANSWER)
        await store.begin("acme", "a", DIGEST, wait_seconds=0)  # "a" is now more recent than "b"
        await store.complete(await store.begin("acme", "c", DIGEST, wait_seconds=0), ANSWER)
        return [await store.begin("acme", key, DIGEST, wait_seconds=0) for key in ("a", "b")]

    kept, dropped = asyncio.run(scenario())
    assert kept == Replay(ANSWER)
    assert isinstance(dropped, Proceed)


def test_memory_never_drops_a_key_in_flight():
    async def scenario():
        store = MemoryIdempotencyStore(max_entries=1)
        await store.begin("acme", "a", DIGEST, wait_seconds=0)
        await store.begin("acme", "b", DIGEST, wait_seconds=0)
        await store.begin("acme", "a", DIGEST, wait_seconds=0)

    with pytest.raises(IdempotencyInFlight):
        asyncio.run(scenario())


def test_an_unreachable_redis_fails_fast():
    async def scenario():
        redis = RedisStore("redis://127.0.0.1:1/0", timeout_seconds=0.2)
        try:
            await RedisIdempotencyStore(redis).begin("acme", "key-1", DIGEST, wait_seconds=5)
        finally:
            await redis.close()

    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="idempotency"):
        asyncio.run(scenario())
    assert time.monotonic() - started < 1.0
