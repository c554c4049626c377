"""An exact-match cache of answers to deterministic requests: temperature 0, or a fixed `seed`.
The key (`cache_key`) is the tenant, the endpoint and the digest of the body, so nothing leaks
between tenants; fields that do not change the answer are left out of it (IGNORED_FIELDS), and
`stream` stays in (a stream and a whole answer are different bodies). Only 200 answers no larger
than `max_entry_bytes` are stored, for `ttl_seconds`.

The caller answers a hit with the stored response and `x-cache: hit` (a miss: `x-cache: miss`);
the StoredResponse keeps the usage of the original answer, so the caller bills a hit with no
completion tokens unless configured to bill them. `gateway_cache_requests_total{result}` counts
`hit`, `miss` (both by `get`) and `bypass` (a request that is not cacheable, by `cache_key`).

Two backends: MemoryResponseCache for one router replica, a least-recently-used cache bounded in
entries and in bytes of bodies; RedisResponseCache for replicas that share Redis, each entry a
string with its own expiry, bounded in entries by an index (a sorted set of entry keys by the time
they were stored) that the same Lua script trims, the oldest stored dropped first. The script
deletes entries it was not given as keys, so it needs one Redis, not a Redis Cluster."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import quote

from prometheus_client import Counter

from router.gateway.bounds import require_positive
from router.gateway.redis_pipeline import LuaScript
from router.gateway.redis_store import RedisStore, milliseconds
from router.gateway.stored_response import StoredResponse, body_digest

CACHE_HEADER = "x-cache"
MEBIBYTE = 1024 * 1024
DEFAULT_TTL_SECONDS = 3600.0
DEFAULT_MAX_ENTRY_BYTES = 1 * MEBIBYTE
# OpenAI's default temperature: a request without one samples.
DEFAULT_TEMPERATURE = 1.0
# Fields that label, log or bill a request but do not change its answer.
IGNORED_FIELDS = frozenset({
    "user",  # the end user, for abuse monitoring
    "metadata",  # tags for the caller's own bookkeeping
    "store",  # whether OpenAI keeps the completion for distillation
    "service_tier",  # a processing tier: latency and price, not content
    "safety_identifier",  # `user`'s successor
    "prompt_cache_key",  # a hint for the upstream's prefix cache
})

CACHE_REQUESTS = Counter("gateway_cache_requests", "Requests to the response cache, by result.", ["result"])


class CacheResult(StrEnum):
    """The `result` label of gateway_cache_requests_total, and (hit, miss) the x-cache header."""

    HIT = "hit"
    MISS = "miss"
    BYPASS = "bypass"  # not cacheable: the request samples


def cache_key(tenant: str, endpoint: str, payload: dict[str, Any]) -> str | None:
    """The key of a deterministic request's answer, or None (counted as a bypass) when the
    request samples: a temperature above 0 (absent is OpenAI's 1) without a `seed`, or more than
    one choice (`n` > 1) without a `seed`."""
    if not is_deterministic(payload):
        CACHE_REQUESTS.labels(CacheResult.BYPASS).inc()
        return None
    answer_fields = {name: value for name, value in payload.items() if name not in IGNORED_FIELDS}
    # The tenant is quoted so that a ':' in its name cannot run into the endpoint.
    return f"{quote(tenant, safe='')}:{endpoint}:{body_digest(answer_fields)}"


def is_deterministic(payload: dict[str, Any]) -> bool:
    if payload.get("seed") is not None:
        return True
    temperature = payload.get("temperature")
    greedy = (DEFAULT_TEMPERATURE if temperature is None else temperature) == 0
    return greedy and payload.get("n") in (None, 1)


class ResponseCache(Protocol):
    def get(self, key: str) -> Awaitable[StoredResponse | None]:
        """The stored answer (a hit) or None (a miss)."""

    async def put(self, key: str, response: StoredResponse) -> None:
        """Store a 200 answer whose body is at most `max_entry_bytes`; others are not stored."""

    async def close(self) -> None: ...


def is_storable(response: StoredResponse, max_entry_bytes: int) -> bool:
    return response.status == 200 and len(response.body) <= max_entry_bytes


def counted(response: StoredResponse | None) -> StoredResponse | None:
    CACHE_REQUESTS.labels(CacheResult.MISS if response is None else CacheResult.HIT).inc()
    return response


@dataclass(slots=True)
class CachedAnswer:
    response: StoredResponse
    expires_at: float


class MemoryResponseCache:
    """Answers of one router replica, the least recently used dropped first when there are more
    than `max_entries` or their bodies add up to more than `max_bytes`."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 64 * MEBIBYTE,
                 ttl_seconds: float = DEFAULT_TTL_SECONDS, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        require_positive(max_entries=max_entries, max_bytes=max_bytes, ttl_seconds=ttl_seconds,
                         max_entry_bytes=max_entry_bytes)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.clock = clock
        self.stored_bytes = 0
        self._answers: OrderedDict[str, CachedAnswer] = OrderedDict()

    async def get(self, key: str) -> StoredResponse | None:
        answer = self._answers.get(key)
        if answer is None:
            return counted(None)
        if answer.expires_at <= self.clock():
            self._drop(key)
            return counted(None)
        self._answers.move_to_end(key)
        return counted(answer.response)

    async def put(self, key: str, response: StoredResponse) -> None:
        if not is_storable(response, self.max_entry_bytes):
            return
        if key in self._answers:
            self._drop(key)
        self._answers[key] = CachedAnswer(response, self.clock() + self.ttl_seconds)
        self.stored_bytes += len(response.body)
        while len(self._answers) > self.max_entries or self.stored_bytes > self.max_bytes:
            self._drop(next(iter(self._answers)))

    async def close(self) -> None:
        self._answers.clear()
        self.stored_bytes = 0

    def _drop(self, key: str) -> None:
        self.stored_bytes -= len(self._answers.pop(key).response.body)


# KEYS: the entry, the index. ARGV: the encoded answer, the TTL in ms, max_entries. Index entries
# older than the TTL name keys that expired already; at most 1000 of the oldest are dropped at
# once, to keep unpack() within Lua's stack (a lowered max_entries gets there over a few puts).
PUT_SCRIPT = """
local time = redis.call('TIME')
local now_ms = time[1] * 1000 + math.floor(time[2] / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now_ms, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - tonumber(ARGV[2]))
local excess = math.min(redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3]), 1000)
if excess > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  redis.call('DEL', unpack(oldest))
  redis.call('ZREM', KEYS[2], unpack(oldest))
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

PUT = LuaScript(PUT_SCRIPT)


class RedisResponseCache:
    """Answers shared by router replicas in Redis: each a string with its TTL, at most
    `max_entries` of them, the oldest stored dropped first."""

    def __init__(self, store: RedisStore, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES, max_entries: int = 10000) -> None:
        require_positive(ttl_seconds=ttl_seconds, max_entry_bytes=max_entry_bytes, max_entries=max_entries)
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.max_entry_bytes = max_entry_bytes
        self.max_entries = max_entries
        self.index_key = store.key("cache-index")

    def get(self, key: str) -> Awaitable[StoredResponse | None]:
        """The answer stored under `key`, its GET sent before this returns (RedisStore.send)."""
        return self._decoded(self.store.send("cache", "GET", self.store.key("cache", key)))

    async def put(self, key: str, response: StoredResponse) -> None:
        if not is_storable(response, self.max_entry_bytes):
            return
        await self.store.run_script("cache", PUT, [self.store.key("cache", key), self.index_key],
                                    [response.to_bytes(), milliseconds(self.ttl_seconds), self.max_entries])

    @staticmethod
    async def _decoded(sent: Awaitable[bytes | None]) -> StoredResponse | None:
        stored = await sent
        return counted(None if stored is None else StoredResponse.from_bytes(stored))

    async def close(self) -> None:
        """Nothing of its own to release: the RedisStore is the caller's, shared with the rest of
        the gateway, and closed by it."""
