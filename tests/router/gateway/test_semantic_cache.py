"""The semantic response cache, in memory and in a real Redis, with the real all-MiniLM-L6-v2:
a reworded prompt gets the cached answer, a prompt that differs in a number never does, scopes
stay apart, entries expire and are bounded, replicas see each other's entries, and a Redis that
cannot be reached fails fast."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from router.gateway.redis_store import RedisStore, RedisUnavailable
from router.gateway.semantic_cache import (
    DEFAULT_THRESHOLD,
    REQUESTS,
    MemorySemanticCache,
    RedisSemanticCache,
    SemanticHit,
)

QUESTION = "How do I reverse a list in Python?"
REWORDED = "How can I reverse a list in Python?"
SCOPE = "tenant-a/small/temperature=0"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def remember_then_ask(cache, stored: list[tuple[str, str]], asked: str, scope: str = SCOPE) -> SemanticHit | None:
    async def scenario() -> SemanticHit | None:
        try:
            for text, value in stored:
                await cache.store(SCOPE, text, value.encode())
            return await cache.lookup(scope, asked)
        finally:
            await cache.close()

    return asyncio.run(scenario())


def test_a_reworded_prompt_gets_the_cached_answer(embedder):
    hits_before = REQUESTS.labels("hit")._value.get()
    hit = remember_then_ask(MemorySemanticCache(embedder), [(QUESTION, "use reversed()")], REWORDED)
    assert hit is not None and hit.value == b"use reversed()"
    assert hit.matched_text == QUESTION
    assert DEFAULT_THRESHOLD <= hit.similarity <= 1.0
    assert REQUESTS.labels("hit")._value.get() == hits_before + 1


def test_a_prompt_below_the_threshold_misses(embedder):
    assert remember_then_ask(MemorySemanticCache(embedder), [(QUESTION, "use reversed()")],
                             "How do I reverse a list in JavaScript?") is None
    assert remember_then_ask(MemorySemanticCache(embedder, threshold=0.9999), [(QUESTION, "use reversed()")],
                             REWORDED) is None


def test_a_changed_number_never_hits_whatever_the_threshold(embedder):
    cache = MemorySemanticCache(embedder, threshold=0.5)
    assert remember_then_ask(cache, [("What is 12 + 30?", "42")], "What is 12 + 31?") is None


def test_the_most_similar_entry_the_guard_allows_is_served(embedder):
    cache = MemorySemanticCache(embedder, threshold=0.8)
    hit = remember_then_ask(cache, [("What is 12 + 31?", "43"), ("What is 12 + 30?", "42")], "What's 12 + 30?")
    assert hit is not None and hit.value == b"42"


class SlowEmbedder:
    """Takes as long as a sentence embedding on a busy CPU; every text the same vector."""

    def embed(self, texts: list[str]) -> np.ndarray:
        time.sleep(0.3)
        return np.ones((len(texts), 4), dtype=np.float32) / 2


def test_the_event_loop_keeps_serving_while_a_prompt_is_embedded():
    async def scenario() -> int:
        cache = MemorySemanticCache(SlowEmbedder())
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        await cache.lookup(SCOPE, QUESTION)
        ticker.cancel()
        await cache.close()
        return ticks

    assert asyncio.run(scenario()) >= 10


def test_scopes_are_isolated(embedder):
    assert remember_then_ask(MemorySemanticCache(embedder), [(QUESTION, "use reversed()")], QUESTION,
                             scope="tenant-b/small/temperature=0") is None


def test_a_prompt_longer_than_the_embedding_reads_is_not_cached(embedder):
    long_prompt = "Summarize this log:\n" + "GET /index.html 200\n" * 400
    assert remember_then_ask(MemorySemanticCache(embedder), [(long_prompt, "a summary")], long_prompt) is None


def test_entries_expire_and_expired_scopes_are_forgotten(embedder):
    clock = FakeClock()
    cache = MemorySemanticCache(embedder, ttl_seconds=60, clock=clock)

    async def scenario() -> tuple[SemanticHit | None, SemanticHit | None, int]:
        await cache.store(SCOPE, QUESTION, b"use reversed()")
        clock.now += 59
        fresh = await cache.lookup(SCOPE, QUESTION)
        clock.now += 2
        expired = await cache.lookup(SCOPE, QUESTION)
        await cache.store("another scope", QUESTION, b"x")
        await cache.close()
        return fresh, expired, len(cache.scopes)

    fresh, expired, scopes = asyncio.run(scenario())
    assert fresh is not None and expired is None
    assert scopes == 1


def test_a_scope_keeps_its_newest_entries(embedder):
    cache = MemorySemanticCache(embedder, max_entries_per_scope=2)
    stored = [("What is the capital of France?", "Paris"), ("Who wrote Hamlet?", "Shakespeare"),
              ("How tall is Mount Everest?", "8849 m")]
    assert remember_then_ask(cache, stored, "What is the capital of France?") is None
    cache = MemorySemanticCache(embedder, max_entries_per_scope=2)
    assert remember_then_ask(cache, stored, "How tall is Mount Everest?").value == b"8849 m"


def redis_cache(redis_server, redis_prefix, embedder, **options) -> RedisSemanticCache:
    return RedisSemanticCache(RedisStore(redis_server.url, prefix=redis_prefix), embedder, **options)


async def close(*caches: RedisSemanticCache) -> None:
    for cache in caches:
        await cache.close()
        await cache.redis.close()


def test_replicas_find_each_others_entries_in_redis(redis_server, redis_prefix, embedder):
    async def scenario() -> list[SemanticHit | None]:
        first = redis_cache(redis_server, redis_prefix, embedder)
        second = redis_cache(redis_server, redis_prefix, embedder)
        try:
            await first.store(SCOPE, QUESTION, b"use reversed()")
            found_by_second = await second.lookup(SCOPE, REWORDED)
            await second.store(SCOPE, "What is 12 + 30?", b"42")
            # The first replica's mirror picks up the second's entry on its next lookup.
            found_by_first = await first.lookup(SCOPE, "What's 12 + 30?")
            near_miss = await first.lookup(SCOPE, "What is 12 + 31?")
            other_scope = await second.lookup("tenant-b", QUESTION)
            return [found_by_second, found_by_first, near_miss, other_scope]
        finally:
            await close(first, second)

    found_by_second, found_by_first, near_miss, other_scope = asyncio.run(scenario())
    assert found_by_second.value == b"use reversed()" and found_by_second.matched_text == QUESTION
    assert found_by_first.value == b"42"
    assert near_miss is None and other_scope is None


def test_redis_entries_are_bounded_and_expire(redis_server, redis_prefix, embedder):
    stored = [("What is the capital of France?", b"Paris"), ("Who wrote Hamlet?", b"Shakespeare"),
              ("How tall is Mount Everest?", b"8849 m")]

    async def scenario() -> list[SemanticHit | None]:
        writer = redis_cache(redis_server, redis_prefix, embedder, max_entries_per_scope=2, ttl_seconds=0.5)
        reader = redis_cache(redis_server, redis_prefix, embedder, max_entries_per_scope=2, ttl_seconds=0.5)
        try:
            for text, value in stored:
                await writer.store(SCOPE, text, value)
            trimmed = await reader.lookup(SCOPE, "What is the capital of France?")
            kept = await reader.lookup(SCOPE, "How tall is Mount Everest?")
            await asyncio.sleep(0.6)
            expired = await reader.lookup(SCOPE, "How tall is Mount Everest?")
            stream_left = await writer.redis.client.exists(writer._stream_key(SCOPE))
            return [trimmed, kept, expired, stream_left]
        finally:
            await close(writer, reader)

    trimmed, kept, expired, stream_left = asyncio.run(scenario())
    assert trimmed is None and kept.value == b"8849 m"
    assert expired is None and stream_left == 0


def test_an_unreachable_redis_fails_fast(embedder):
    async def scenario(operation: str) -> None:
        cache = RedisSemanticCache(RedisStore("redis://127.0.0.1:1/0", timeout_seconds=0.2), embedder)
        try:
            if operation == "lookup":
                await cache.lookup(SCOPE, QUESTION)
            else:
                await cache.store(SCOPE, QUESTION, b"use reversed()")
        finally:
            await close(cache)

    for operation in ("lookup", "store"):
        started = time.monotonic()
        with pytest.raises(RedisUnavailable):
            asyncio.run(scenario(operation))
        assert time.monotonic() - started < 2


@pytest.mark.parametrize("options", [{"threshold": 0.0}, {"threshold": 1.5}, {"max_entries_per_scope": 0},
                                     {"ttl_seconds": 0}])
def test_settings_out_of_range_are_refused(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        MemorySemanticCache(SlowEmbedder(), **options)
