"""Idempotent retries: a request with an `Idempotency-Key` header runs once per tenant, key and
body within `ttl_seconds`. Its repeat with the same body gets the stored answer replayed (and is
not billed again); a repeat that arrives while the first is still running waits for its answer
(up to `wait_seconds`, then 409 "still in progress", as Stripe answers); the same key with another
body is a 409 conflict. Keys are scoped per tenant: two tenants may use the same key.

The caller begins a request (`begin`), and then either completes it with its final answer
(`complete`) or abandons it (`abandon`) so that a retry runs again. The caller completes a final
status below 500 (a 4xx is deterministic, so it is replayed too) and abandons a 5xx, an upstream
failure or a client that went away. Streams: a stream is stored whole once it has ended and is
replayed as one event-stream body; a duplicate of a stream in flight waits for its end; a stream
the client cancelled is abandoned (its tokens are billed once, as they were used), so a retry
runs again and is billed again.

The key's owner holds a lease (`lease_seconds`): a router that dies mid-request frees its keys
when the lease runs out, and a `complete` after its lease was taken over is ignored.

Two backends behave the same: MemoryIdempotencyStore for one router replica, and
RedisIdempotencyStore for replicas that share Redis. A Redis that cannot be reached raises
RedisUnavailable (the caller's FailureMode decides); no call waits longer than the store's timeout
or `wait_seconds`.

`gateway_idempotency_total{result}` counts requests with a key: `new` (it runs), `replayed` (an
earlier answer, at once), `waited` (an earlier answer, after waiting for it), `conflict` (another
body), `in_progress` (still running after `wait_seconds`)."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from itertools import islice
from typing import Protocol
from urllib.parse import quote

from prometheus_client import Counter

from router.gateway.bounds import require_positive
from router.gateway.redis_pipeline import LuaScript
from router.gateway.redis_store import RedisStore, milliseconds
from router.gateway.stored_response import StoredResponse

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255
DEFAULT_TTL_SECONDS = 86400.0
DEFAULT_LEASE_SECONDS = 600.0
DEFAULT_MAX_ENTRIES = 10000
# Redis waiters poll the key: soon at first (most duplicates are retries of a short request),
# then no more than four times a second.
POLL_START_SECONDS = 0.01
POLL_CAP_SECONDS = 0.25

VISIBLE_ASCII_KEY = re.compile(r"[\x21-\x7e]+")

IDEMPOTENCY_REQUESTS = Counter("gateway_idempotency", "Requests with an Idempotency-Key, by what the gateway did.",
                               ["result"])


class IdempotencyResult(StrEnum):
    """The `result` label of gateway_idempotency_total."""

    NEW = "new"
    REPLAYED = "replayed"
    WAITED = "waited"
    CONFLICT = "conflict"
    IN_PROGRESS = "in_progress"


class InvalidIdempotencyKey(ValueError):
    """The Idempotency-Key header is empty, too long, or has characters a key may not (-> 400)."""


class IdempotencyConflict(Exception):
    """The key was used with another request body (-> 409)."""


class IdempotencyInFlight(Exception):
    """The request first sent with this key is still running after the wait (-> 409)."""


@dataclass(frozen=True, slots=True)
class Proceed:
    """The caller owns the key: run the request, then `complete()` or `abandon()` it.
    `entry_key` names the store's entry (tenant and key); `digest` is the request body's."""

    token: str
    entry_key: str
    digest: str


@dataclass(frozen=True, slots=True)
class Replay:
    """The stored answer of an earlier request with this key and body."""

    response: StoredResponse


class Busy(Enum):
    """Why `begin` could not take a key at once."""

    IN_FLIGHT = "in flight"  # the same body is running: wait for it
    OTHER_BODY = "other body"  # conflict


Claim = Proceed | Replay | Busy


class IdempotencyStore(Protocol):
    def begin(self, tenant: str, key: str, digest: str, wait_seconds: float) -> Awaitable[Proceed | Replay]:
        """Proceed (the caller owns the key) or Replay (the earlier answer). A duplicate of a
        request in flight waits up to `wait_seconds` for its answer; if that request is abandoned
        meanwhile, the waiter owns the key. Raises InvalidIdempotencyKey at once; awaited, it
        raises IdempotencyConflict, IdempotencyInFlight, RedisUnavailable. A store in Redis sends
        its first claim before returning, so the caller's next work overlaps the round trip."""

    async def complete(self, proceed: Proceed, response: StoredResponse) -> None:
        """Store the answer for `ttl_seconds` and hand it to the waiting duplicates."""

    async def abandon(self, proceed: Proceed) -> None:
        """Free the key (the request failed or was cancelled) so that a retry runs again; after
        `complete` it does nothing, so callers may abandon in a `finally`."""

    async def close(self) -> None: ...


def validate_key(key: str) -> None:
    if not key:
        raise InvalidIdempotencyKey(
            f"Idempotency-Key is empty: a key is 1 to {MAX_KEY_LENGTH} visible ASCII characters")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(f"Idempotency-Key has {len(key)} characters: at most {MAX_KEY_LENGTH} are allowed")
    if not VISIBLE_ASCII_KEY.fullmatch(key):
        raise InvalidIdempotencyKey("Idempotency-Key may only have visible ASCII characters ('!' to '~'): "
                                    "no spaces, control or non-ASCII characters")


def entry_name(tenant: str, key: str) -> str:
    """The tenant, quoted so that a ':' in its name cannot run into the key, then the key."""
    return f"{quote(tenant, safe='')}:{key}"


def new_token() -> str:
    return secrets.token_hex(16)


class WaitingStore(ABC):
    """What both backends share: `begin` claims the key, or waits for its owner to finish."""

    def begin(self, tenant: str, key: str, digest: str, wait_seconds: float) -> Awaitable[Proceed | Replay]:
        validate_key(key)
        entry_key = self._entry_key(tenant, key)
        return self._settle(self._claim(entry_key, digest), key, entry_key, digest, wait_seconds)

    async def _settle(self, first_claim: Awaitable[Claim], key: str, entry_key: str, digest: str,
                      wait_seconds: float) -> Proceed | Replay:
        deadline = time.monotonic() + wait_seconds
        attempt = 0
        claiming = first_claim
        while True:
            claim = await claiming
            if claim is Busy.OTHER_BODY:
                IDEMPOTENCY_REQUESTS.labels(IdempotencyResult.CONFLICT).inc()
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} was already used with another request body; "
                    "a retry must send the same body, a new request needs a new key")
            if claim is not Busy.IN_FLIGHT:
                IDEMPOTENCY_REQUESTS.labels(settled_result(claim, waited=attempt > 0)).inc()
                return claim
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                IDEMPOTENCY_REQUESTS.labels(IdempotencyResult.IN_PROGRESS).inc()
                raise IdempotencyInFlight(
                    f"a request with Idempotency-Key {key!r} is still in progress after waiting "
                    f"{wait_seconds:g} s; retry later")
            await self._wait(entry_key, remaining, attempt)
            attempt += 1
            claiming = self._claim(entry_key, digest)

    @abstractmethod
    def _entry_key(self, tenant: str, key: str) -> str: ...

    @abstractmethod
    def _claim(self, entry_key: str, digest: str) -> Awaitable[Claim]:
        """Take the key if it is free, else what holds it (a command to Redis is sent at once)."""

    @abstractmethod
    async def _wait(self, entry_key: str, remaining: float, attempt: int) -> None:
        """Return when the entry may have changed, or after `remaining` seconds at most."""


def settled_result(claim: Proceed | Replay, waited: bool) -> IdempotencyResult:
    if isinstance(claim, Proceed):
        return IdempotencyResult.NEW
    return IdempotencyResult.WAITED if waited else IdempotencyResult.REPLAYED


@dataclass(slots=True)
class MemoryEntry:
    digest: str
    token: str | None  # the owner's while in flight; None once completed
    expires_at: float
    settled: asyncio.Event
    response: StoredResponse | None = None


class MemoryIdempotencyStore(WaitingStore):
    """Keys of one router replica: waiters wait on an asyncio.Event; at most `max_entries` keys,
    the least recently used answer dropped first (keys in flight are never dropped: the running
    requests bound them)."""

    def __init__(self, ttl_seconds: float = DEFAULT_TTL_SECONDS, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        require_positive(ttl_seconds=ttl_seconds, max_entries=max_entries, lease_seconds=lease_seconds)
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._entries: OrderedDict[str, MemoryEntry] = OrderedDict()

    async def complete(self, proceed: Proceed, response: StoredResponse) -> None:
        entry = self._owned_entry(proceed)
        if entry is None:
            logger.warning("Idempotency entry %s was no longer ours to complete (its lease ran out)", proceed.entry_key)
            return
        entry.response = response
        entry.token = None
        entry.expires_at = self.clock() + self.ttl_seconds
        entry.settled.set()

    async def abandon(self, proceed: Proceed) -> None:
        entry = self._owned_entry(proceed)
        if entry is not None:
            del self._entries[proceed.entry_key]
            entry.settled.set()

    async def close(self) -> None:
        self._entries.clear()

    def _entry_key(self, tenant: str, key: str) -> str:
        return entry_name(tenant, key)

    async def _claim(self, entry_key: str, digest: str) -> Claim:
        entry = self._live_entry(entry_key)
        if entry is None:
            token = new_token()
            self._entries[entry_key] = MemoryEntry(digest, token, self.clock() + self.lease_seconds, asyncio.Event())
            self._evict()
            return Proceed(token, entry_key, digest)
        self._entries.move_to_end(entry_key)
        if entry.digest != digest:
            return Busy.OTHER_BODY
        return Busy.IN_FLIGHT if entry.response is None else Replay(entry.response)

    async def _wait(self, entry_key: str, remaining: float, attempt: int) -> None:
        entry = self._entries[entry_key]
        lease_left = entry.expires_at - self.clock()
        try:
            await asyncio.wait_for(entry.settled.wait(), timeout=max(0.0, min(remaining, lease_left)))
        except TimeoutError:
            pass  # the wait is over or the owner's lease ran out: the next claim says which

    def _live_entry(self, entry_key: str) -> MemoryEntry | None:
        entry = self._entries.get(entry_key)
        if entry is not None and entry.expires_at <= self.clock():
            del self._entries[entry_key]
            return None
        return entry

    def _owned_entry(self, proceed: Proceed) -> MemoryEntry | None:
        entry = self._live_entry(proceed.entry_key)
        return entry if entry is not None and entry.token == proceed.token else None

    def _evict(self) -> None:
        excess = len(self._entries) - self.max_entries
        if excess <= 0:
            return
        answered = (entry_key for entry_key, entry in self._entries.items() if entry.response is not None)
        for entry_key in list(islice(answered, excess)):
            del self._entries[entry_key]


# An entry is a hash: `digest` always; `token` while its owner runs it (the key then expires with
# the lease); `response` (StoredResponse.to_bytes) once completed (the key then expires with the TTL).
BEGIN_SCRIPT = """
local entry = redis.call('HMGET', KEYS[1], 'digest', 'response')
if not entry[1] then
  redis.call('HSET', KEYS[1], 'digest', ARGV[2], 'token', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'new'}
end
if entry[1] ~= ARGV[2] then return {'conflict'} end
if entry[2] then return {'done', entry[2]} end
return {'pending'}
"""
COMPLETE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'token')
redis.call('HSET', KEYS[1], 'response', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
ABANDON_SCRIPT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

BEGIN, COMPLETE, ABANDON = LuaScript(BEGIN_SCRIPT), LuaScript(COMPLETE_SCRIPT), LuaScript(ABANDON_SCRIPT)


class RedisIdempotencyStore(WaitingStore):
    """Keys shared by router replicas in Redis, each claimed, completed and abandoned by one Lua
    script (atomic); waiters poll the key with backoff (10 ms, doubling, at most 250 ms)."""

    def __init__(self, store: RedisStore, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        require_positive(ttl_seconds=ttl_seconds, lease_seconds=lease_seconds)
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = lease_seconds

    async def complete(self, proceed: Proceed, response: StoredResponse) -> None:
        completed = await self.store.run_script("idempotency", COMPLETE, [proceed.entry_key],
                                                [proceed.token, response.to_bytes(), milliseconds(self.ttl_seconds)])
        if not completed:
            logger.warning("Idempotency entry %s was no longer ours to complete (its lease ran out)", proceed.entry_key)

    async def abandon(self, proceed: Proceed) -> None:
        await self.store.run_script("idempotency", ABANDON, [proceed.entry_key], [proceed.token])

    async def close(self) -> None:
        """Nothing of its own to release: the RedisStore is the caller's, shared with the rest of
        the gateway, and closed by it."""

    def _entry_key(self, tenant: str, key: str) -> str:
        return self.store.key("idempotency", entry_name(tenant, key))

    def _claim(self, entry_key: str, digest: str) -> Awaitable[Claim]:
        token = new_token()
        sent = self.store.run_script("idempotency", BEGIN, [entry_key],
                                     [token, digest, milliseconds(self.lease_seconds)])
        return self._claimed(sent, token, entry_key, digest)

    async def _claimed(self, sent: Awaitable[list], token: str, entry_key: str, digest: str) -> Claim:
        state, *response = await sent
        match state:
            case b"new":
                return Proceed(token, entry_key, digest)
            case b"done":
                return Replay(StoredResponse.from_bytes(response[0]))
            case b"conflict":
                return Busy.OTHER_BODY
        return Busy.IN_FLIGHT

    async def _wait(self, entry_key: str, remaining: float, attempt: int) -> None:
        await asyncio.sleep(min(remaining, POLL_START_SECONDS * 2 ** min(attempt, 5), POLL_CAP_SECONDS))

