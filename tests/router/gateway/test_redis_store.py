"""The gateway's Redis connection: calls go through with the deployment's key prefix, and a server
that cannot be reached is a RedisUnavailable within the timeout, not a hang."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.gateway.redis_store import REDIS_UP, RedisStore, RedisUnavailable


def test_calls_use_the_prefix(redis_server, redis_prefix):
    async def scenario() -> bytes:
        store = RedisStore(redis_server.url, prefix=redis_prefix)
        try:
            await store.call("test", store.client.set(store.key("answer"), b"42"))
            return await store.call("test", store.client.get(redis_prefix + "answer"))
        finally:
            await store.close()

    assert asyncio.run(scenario()) == b"42"
    assert REDIS_UP.labels("open")._value.get() == 1


def test_an_unreachable_server_fails_fast():
    async def scenario() -> None:
        store = RedisStore("redis://:secret@127.0.0.1:1/0", timeout_seconds=0.2)
        try:
            await store.ping()
        finally:
            await store.close()

    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as failure:
        asyncio.run(scenario())
    assert time.monotonic() - started < 2
    assert "secret" not in str(failure.value)
    assert REDIS_UP.labels("open")._value.get() == 0
