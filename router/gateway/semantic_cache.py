"""The gateway's semantic response cache: a prompt close enough in meaning to one
answered before gets that answer. Close enough is the cosine similarity of all-MiniLM-L6-v2
sentence embeddings at or above a threshold, and the near-miss guard (router/gateway/near_miss.py)
agreeing: "What is 12 + 31?" never gets the answer to "What is 12 + 30?".

A scope holds what must match exactly besides the prompt (tenant, model, every generation
parameter); the caller builds it. Values are opaque bytes (the caller's serialized response).
The vectors sit in this process (MemorySemanticCache) or in Redis, shared by the router's replicas
(RedisSemanticCache), each replica searching a local mirror it refreshes from a Redis Stream."""

from __future__ import annotations

import asyncio
import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from prometheus_client import Counter, Histogram

from router.embeddings import EMBEDDED_CHARS
from router.gateway.near_miss import same_exact_tokens
from router.gateway.redis_store import RedisStore
from router.gateway.vector_index import IndexEntry, Match, ScopedIndexes, VectorIndex

# The lowest threshold whose hits were all right (precision >= 0.99) with the near-miss guard on
# benchmarks/data/semantic_cache_pairs.jsonl (benchmarks/semantic_cache.py), serving about half of
# its paraphrases. The guard was written from those pairs: on 50 held-out ones it served 10 hits,
# 2 of them wrong ("soft yolk" for "hard yolk", "bad for your health" for "good"), opposites no
# word list foresees. So the cache is for tenants who accept that, and off unless asked for.
DEFAULT_THRESHOLD = 0.95
DEFAULT_MAX_ENTRIES_PER_SCOPE = 1000
DEFAULT_TTL_SECONDS = 3600.0
REDIS_USE = "semantic_cache"

REQUESTS = Counter("gateway_semantic_cache_requests", "Lookups of the semantic response cache, by result.",
                   ["result"])
SIMILARITY = Histogram("gateway_semantic_cache_similarity",
                       "The best cosine similarity of a lookup's prompt to one cached in its scope.",
                       buckets=(0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0))
LOOKUP_SECONDS = Histogram("gateway_semantic_cache_lookup_seconds",
                           "Time of a semantic cache lookup: the prompt's embedding and the search.",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class SemanticHit:
    value: bytes
    similarity: float
    matched_text: str


class SemanticCache(Protocol):
    async def lookup(self, scope: str, text: str) -> SemanticHit | None: ...

    async def store(self, scope: str, text: str, value: bytes) -> None: ...

    async def close(self) -> None: ...


def best_match(matches: list[Match], text: str) -> Match | None:
    """The most similar of the matches above the threshold that the near-miss guard lets through."""
    return next((match for match in matches if same_exact_tokens(text, match.entry.text)), None)


def cacheable(text: str) -> bool:
    """The embedding reads a text's first EMBEDDED_CHARS characters: two longer prompts that share
    those would look identical whatever followed, so they are neither looked up nor stored."""
    return len(text) <= EMBEDDED_CHARS


class _EmbeddingCache(ABC):
    """What both caches share: validation, the embedding worker, and the lookup's metrics."""

    def __init__(self, embedder: Embedder, threshold: float, max_entries_per_scope: int,
                 ttl_seconds: float) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"the semantic cache's threshold must be in (0, 1], got {threshold}")
        if max_entries_per_scope < 1:
            raise ValueError(f"max_entries_per_scope must be >= 1, got {max_entries_per_scope}")
        if ttl_seconds <= 0:
            raise ValueError(f"the semantic cache's ttl_seconds must be > 0, got {ttl_seconds}")
        self.embedder = embedder
        self.threshold = threshold
        self.max_entries_per_scope = max_entries_per_scope
        self.ttl_seconds = ttl_seconds
        # One thread: an embedding takes milliseconds of CPU, and torch's own threads do the
        # parallel part; several at once would only contend for the same cores.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semantic-cache-embedding")

    async def embed(self, text: str) -> np.ndarray:
        vectors = await asyncio.get_running_loop().run_in_executor(self.executor, self.embedder.embed, [text])
        return vectors[0]

    async def lookup(self, scope: str, text: str) -> SemanticHit | None:
        started = time.perf_counter()
        hit = None
        if cacheable(text):
            best_similarity, hit = await self._search(scope, text, await self.embed(text))
            if best_similarity is not None:
                SIMILARITY.observe(best_similarity)
        LOOKUP_SECONDS.observe(time.perf_counter() - started)
        REQUESTS.labels("miss" if hit is None else "hit").inc()
        return hit

    async def close(self) -> None:
        self.executor.shutdown(wait=False)

    @abstractmethod
    async def _search(self, scope: str, text: str, vector: np.ndarray) -> tuple[float | None, SemanticHit | None]:
        """The best similarity in the scope (None when it is empty) and the hit, if any."""


class MemorySemanticCache(_EmbeddingCache):
    """The semantic cache of one process."""

    def __init__(self, embedder: Embedder, threshold: float = DEFAULT_THRESHOLD,
                 max_entries_per_scope: int = DEFAULT_MAX_ENTRIES_PER_SCOPE,
                 ttl_seconds: float = DEFAULT_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(embedder, threshold, max_entries_per_scope, ttl_seconds)
        self.clock = clock
        self.scopes: ScopedIndexes[VectorIndex[bytes]] = ScopedIndexes(lambda: VectorIndex(max_entries_per_scope))

    async def store(self, scope: str, text: str, value: bytes) -> None:
        if not cacheable(text):
            return
        vector = await self.embed(text)
        now = self.clock()
        self.scopes.get_or_create(scope, now - self.ttl_seconds).add(vector[None], [IndexEntry(text, value, now)])
        self.scopes.added(scope)

    async def _search(self, scope: str, text: str, vector: np.ndarray) -> tuple[float | None, SemanticHit | None]:
        index = self.scopes.get(scope, self.clock() - self.ttl_seconds)
        if index is None:
            return None, None
        best_similarity, matches = index.search(vector, self.threshold)
        match = best_match(matches, text)
        hit = None if match is None else SemanticHit(match.entry.payload, match.similarity, match.entry.text)
        return best_similarity, hit


class StreamMirror(VectorIndex[str]):
    """A replica's copy of one scope's vectors; payloads are the Redis keys of the answers, and
    `last_id` the newest stream entry copied."""

    def __init__(self, max_entries: int) -> None:
        super().__init__(max_entries)
        self.last_id = b""


class RedisSemanticCache(_EmbeddingCache):
    """The semantic cache shared by the router's replicas. Each scope has a Redis Stream of
    (text, vector, answer key) trimmed to max_entries_per_scope, and each answer its own key
    expiring after ttl_seconds; the stream expires ttl_seconds after its last write, and mirrors
    skip its entries older than that. A lookup reads only the stream entries this replica has not seen
    (one round trip, usually empty), searches its mirror, and fetches the answer of a hit. A
    Redis failure raises RedisUnavailable (from RedisStore): the caller treats it as a miss.
    close() leaves the RedisStore open: it belongs to the caller, who shares it."""

    def __init__(self, store: RedisStore, embedder: Embedder, threshold: float = DEFAULT_THRESHOLD,
                 max_entries_per_scope: int = DEFAULT_MAX_ENTRIES_PER_SCOPE,
                 ttl_seconds: float = DEFAULT_TTL_SECONDS) -> None:
        super().__init__(embedder, threshold, max_entries_per_scope, ttl_seconds)
        self.redis = store
        # Stream ids are the Redis server's wall-clock milliseconds, so mirrors age by wall clock.
        self.clock = time.time
        self.mirrors: ScopedIndexes[StreamMirror] = ScopedIndexes(lambda: StreamMirror(max_entries_per_scope))

    async def store(self, scope: str, text: str, value: bytes) -> None:
        if not cacheable(text):
            return
        vector = await self.embed(text)
        answer_key = self._answer_key(scope, text)
        ttl_milliseconds = max(1, round(self.ttl_seconds * 1000))
        pipeline = self.redis.client.pipeline(transaction=True)
        pipeline.set(answer_key, value, px=ttl_milliseconds)
        pipeline.xadd(self._stream_key(scope), {"text": text.encode(), "vector": vector.astype(np.float32).tobytes(),
                                                "answer": answer_key.encode()},
                      maxlen=self.max_entries_per_scope, approximate=False)
        pipeline.pexpire(self._stream_key(scope), ttl_milliseconds)
        await self.redis.call(REDIS_USE, pipeline.execute())

    async def _search(self, scope: str, text: str, vector: np.ndarray) -> tuple[float | None, SemanticHit | None]:
        mirror = await self._refreshed_mirror(scope)
        best_similarity, matches = mirror.search(vector, self.threshold)
        match = best_match(matches, text)
        if match is None:
            return best_similarity, None
        value = await self.redis.call(REDIS_USE, self.redis.client.get(match.entry.payload))
        # The answer expired in Redis before this mirror aged the entry out.
        hit = None if value is None else SemanticHit(value, match.similarity, match.entry.text)
        return best_similarity, hit

    async def _refreshed_mirror(self, scope: str) -> StreamMirror:
        """The scope's mirror with the stream entries written since it last looked. Only the
        newest max_entries_per_scope new ones matter: the mirror keeps no more."""
        mirror = self.mirrors.get_or_create(scope, self.clock() - self.ttl_seconds)
        newer_than = b"(" + mirror.last_id if mirror.last_id else b"-"
        fresh = await self.redis.call(REDIS_USE, self.redis.client.xrevrange(
            self._stream_key(scope), max=b"+", min=newer_than, count=self.max_entries_per_scope))
        if fresh:
            fresh.reverse()
            mirror.add(np.stack([np.frombuffer(fields[b"vector"], dtype=np.float32) for _, fields in fresh]),
                       [IndexEntry(fields[b"text"].decode(), fields[b"answer"].decode(), _written_at(entry_id))
                        for entry_id, fields in fresh])
            mirror.last_id = fresh[-1][0]
            mirror.drop_older_than(self.clock() - self.ttl_seconds)
            self.mirrors.added(scope)
        return mirror

    def _stream_key(self, scope: str) -> str:
        return self.redis.key("semantic", _digest(scope), "vectors")

    def _answer_key(self, scope: str, text: str) -> str:
        return self.redis.key("semantic", _digest(scope), "answer", _digest(text))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _written_at(stream_id: bytes) -> float:
    return int(stream_id.split(b"-")[0]) / 1000
