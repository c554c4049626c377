"""The response cache, the same on both backends (memory, and Redis shared by replicas): only
deterministic requests are cached, under a key of their tenant and of what changes the answer;
only whole 200 answers are kept, for a while and within bounds; an unreachable Redis fails fast."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import pytest
from prometheus_client import REGISTRY

from router.gateway.redis_store import RedisStore, RedisUnavailable
from router.gateway.response_cache import MemoryResponseCache, RedisResponseCache, cache_key
from router.gateway.stored_response import StoredResponse

CHAT = "/openai/v1/chat/completions"
GREEDY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
ANSWER = StoredResponse(200, "application/json", b'{"choices":[]}', {"x-route": "small"}, 10, 4)


def answer(size: int = 10, status: int = 200) -> StoredResponse:
    return StoredResponse(status, "application/json", b"x" * size, {}, 10, 4)


@pytest.fixture
def open_cache(backend):
    """An async context manager that opens a cache of the backend under test."""
    return partial(backend.open, MemoryResponseCache, RedisResponseCache)


def counted(result: str) -> float:
    return REGISTRY.get_sample_value("gateway_cache_requests_total", {"result": result}) or 0.0


@pytest.mark.parametrize("sampling", [
    {},  # OpenAI's default temperature is 1
    {"temperature": 0.7},
    {"temperature": None},
    {"temperature": 0, "n": 2},
])
def test_sampled_requests_are_not_cached(sampling):
    payload = {key: value for key, value in GREEDY.items() if key != "temperature"} | sampling
    bypassed = counted("bypass")
    assert cache_key("acme", CHAT, payload) is None
    assert counted("bypass") == bypassed + 1


@pytest.mark.parametrize("fixed", [
    {"temperature": 0},
    {"temperature": 0, "n": 1},
    {"temperature": 0.9, "seed": 7},
    {"seed": 7, "n": 3},
])
def test_greedy_or_seeded_requests_are_cached(fixed):
    payload = {key: value for key, value in GREEDY.items() if key != "temperature"} | fixed
    assert cache_key("acme", CHAT, payload) is not None


def test_fields_that_do_not_change_the_answer_share_a_key():
    labelled = GREEDY | {"user": "u-1", "metadata": {"job": "nightly"}, "store": True, "service_tier": "flex"}
    reordered = dict(reversed(list(GREEDY.items())))
    assert cache_key("acme", CHAT, labelled) == cache_key("acme", CHAT, GREEDY) == cache_key("acme", CHAT, reordered)


@pytest.mark.parametrize("tenant, endpoint, change", [
    ("acme", CHAT, {"messages": [{"role": "user", "content": "ho"}]}),
    ("acme", CHAT, {"stream": True}),
    ("acme", CHAT, {"max_tokens": 5}),
    ("acme", "/openai/v1/completions", {}),
    ("globex", CHAT, {}),
])
def test_what_changes_the_answer_changes_the_key(tenant, endpoint, change):
    assert cache_key(tenant, endpoint, GREEDY | change) != cache_key("acme", CHAT, GREEDY)


def test_a_stored_answer_is_a_hit(open_cache):
    async def scenario():
        async with open_cache() as cache:
            key = cache_key("acme", CHAT, GREEDY)
            before = await cache.get(key)
            await cache.put(key, ANSWER)
            return before, await cache.get(key)

    hits, misses = counted("hit"), counted("miss")
    before, after = asyncio.run(scenario())
    assert before is None
    assert after == ANSWER
    assert (counted("hit"), counted("miss")) == (hits + 1, misses + 1)


def test_tenants_never_see_each_others_answers(open_cache):
    async def scenario():
        async with open_cache() as cache:
            await cache.put(cache_key("acme", CHAT, GREEDY), ANSWER)
            return await cache.get(cache_key("globex", CHAT, GREEDY))

    assert asyncio.run(scenario()) is None


def test_only_whole_successful_answers_are_stored(open_cache):
    async def scenario():
        async with open_cache(max_entry_bytes=100) as cache:
            await cache.put("error", answer(status=400))
            await cache.put("large", answer(size=101))
            await cache.put("largest-kept", answer(size=100))
            return [await cache.get(key) for key in ("error", "large", "largest-kept")]

    assert asyncio.run(scenario()) == [None, None, answer(size=100)]


def test_answers_expire_after_the_ttl(open_cache):
    async def scenario():
        async with open_cache(ttl_seconds=0.2) as cache:
            await cache.put("k", ANSWER)
            await asyncio.sleep(0.3)
            return await cache.get("k")

    assert asyncio.run(scenario()) is None


def test_the_cache_keeps_at_most_max_entries(open_cache):
    async def scenario():
        async with open_cache(max_entries=2) as cache:
            for key in ("a", "b", "c"):
                await cache.put(key, ANSWER)
            return [await cache.get(key) for key in ("a", "b", "c")]

    assert asyncio.run(scenario()) == [None, ANSWER, ANSWER]


def test_memory_drops_the_least_recently_used_first():
    async def scenario():
        cache = MemoryResponseCache(max_entries=2)
        await cache.put("a", ANSWER)
        await cache.put("b", ANSWER)
        await cache.get("a")
        await cache.put("c", ANSWER)
        return [await cache.get(key) for key in ("a", "b", "c")]

    assert asyncio.run(scenario()) == [ANSWER, None, ANSWER]


def test_memory_keeps_its_bodies_within_max_bytes():
    async def scenario():
        cache = MemoryResponseCache(max_bytes=250, max_entry_bytes=100)
        for key in ("a", "b", "c"):
            await cache.put(key, answer(size=100))
        return [await cache.get(key) is not None for key in ("a", "b", "c")], cache.stored_bytes

    kept, stored_bytes = asyncio.run(scenario())
    assert kept == [False, True, True]
    assert stored_bytes == 200


def test_an_unreachable_redis_fails_fast():
    async def scenario():
        redis = RedisStore("redis://127.0.0.1:1/0", timeout_seconds=0.2)
        try:
            await RedisResponseCache(redis).get("k")
        finally:
            await redis.close()

    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="cache"):
        asyncio.run(scenario())
    assert time.monotonic() - started < 1.0
