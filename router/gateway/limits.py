"""Admission and settlement of a tenant's requests against its limits (router/gateway/tenants.py),
with OpenAI's conventions. Requests and tokens per minute are token buckets: as full as their limit
when idle, refilled continuously at limit/60 per second. A request is admitted with a reservation
(prompt tokens + max_tokens, counted by the caller) only if every limit has room for all of it: one
request, the reserved tokens, a concurrency slot and the reserved tokens of the budget of the
current calendar period are then taken together, or nothing is. Settling the request with the tokens
it used gives back what it did not use (or takes what it used beyond the reservation, so a
misestimate delays the next requests instead of overshooting) and frees its slot. Slots are leases
that expire, so a replica that dies holding some does not hold them forever.

MemoryLimiter keeps the limits of one replica in process; RedisLimiter shares them between replicas
through Redis, checking and taking each admission in one Lua script on Redis's clock."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from prometheus_client import Counter

from router.gateway.redis_pipeline import LuaScript, Reply
from router.gateway.redis_store import FailureMode, RedisStore, RedisUnavailable
from router.gateway.tenants import Tenant, TenantPolicy

DEFAULT_LEASE_SECONDS = 900.0
# A freed slot is not announced: a client refused for concurrency tries again after this long.
CONCURRENCY_RETRY_SECONDS = 1.0
SECONDS_PER_MINUTE = 60.0

LIMITED_REQUESTS = Counter("gateway_limited_requests", "Requests the gateway refused for a tenant's limit, by limit.",
                           ["tenant", "limit"])

Clock = Callable[[], float]


class Limit(StrEnum):
    """Which limit refused a request; also the `limit` label of gateway_limited_requests_total."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    CONCURRENCY = "concurrency"
    BUDGET = "budget"
    REQUEST_TOO_LARGE = "request_too_large"  # more tokens than a full bucket or a whole budget holds


@dataclass(frozen=True, slots=True)
class LimitState:
    """A tenant's rate limits as OpenAI's x-ratelimit-* headers report them; None where it has none."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_seconds: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_seconds: float | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.limit_requests is not None:
            headers["x-ratelimit-limit-requests"] = str(self.limit_requests)
            headers["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
            headers["x-ratelimit-reset-requests"] = format_reset(self.reset_requests_seconds)
        if self.limit_tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            headers["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
            headers["x-ratelimit-reset-tokens"] = format_reset(self.reset_tokens_seconds)
        return headers


def format_reset(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it (Go's time.Duration): 20ms, 1s, 1m30.5s, 6m0s,
    1h0m0s. Rounded up to the millisecond, so that a client waiting that long finds the room."""
    milliseconds = math.ceil(max(seconds, 0.0) * 1000 - 1e-6)
    if milliseconds < 1000:
        return f"{milliseconds}ms" if milliseconds else "0s"
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole_seconds, milliseconds = divmod(milliseconds, 1000)
    text = f"{whole_seconds}.{milliseconds:03d}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    return f"{hours}h{text}" if hours else text


@dataclass(slots=True)
class Admission:
    """A request let through, with what it holds until it is settled: `tokens` reserved, a
    concurrency lease, the budget period it was counted in. `unmetered`: Redis could not be
    reached and the failure mode let it through without taking anything."""

    tenant: Tenant
    tokens: int
    lease_id: str | None
    period_start: float | None
    state: LimitState
    unmetered: bool = False
    settled: bool = False


class RateLimited(Exception):
    """A request refused by one of its tenant's limits (a 429). `retry_after_seconds` is how long
    until that limit has room for it; 0 for request_too_large, which retrying never cures."""

    def __init__(self, limit: Limit, message: str, retry_after_seconds: float, state: LimitState) -> None:
        super().__init__(message)
        self.limit = limit
        self.message = message
        self.retry_after_seconds = retry_after_seconds
        self.state = state


class LimitsUnavailable(Exception):
    """The shared limits cannot be checked (Redis unreachable) and the failure mode is closed (a 503)."""


class Limiter(Protocol):
    def admit(self, tenant: Tenant, tokens: int) -> Awaitable[Admission]:
        """Admit a request reserving `tokens`, or raise RateLimited (or LimitsUnavailable). A
        limiter in Redis sends its command before returning, so the caller's next work overlaps
        the round trip."""

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        """Account the tokens the request used and free its slot; once, whatever the calls."""

    async def refresh(self, admission: Admission) -> None:
        """Extend the concurrency lease of a request still running."""

    async def close(self) -> None:
        """Finish the settlements under way."""


@dataclass(frozen=True, slots=True)
class Reading:
    """A tenant's limits at one instant: before a reservation that was refused, or after one that
    was taken. None where the tenant has no such limit."""

    requests_level: float | None
    tokens_level: float | None
    leases: int | None
    budget_used: int | None
    budget_seconds_left: float | None  # until the budget's period ends, by the clock that placed it


def limit_state(policy: TenantPolicy, reading: Reading) -> LimitState:
    requests = _bucket_state(policy.requests_per_minute, reading.requests_level)
    tokens = _bucket_state(policy.tokens_per_minute, reading.tokens_level)
    return LimitState(*requests, *tokens)


def _bucket_state(capacity: int | None, level: float | None) -> tuple[int | None, int | None, float | None]:
    """The limit, the whole requests or tokens left and the seconds until full again."""
    if capacity is None:
        return None, None, None
    return capacity, max(0, math.floor(level)), max(0.0, (capacity - level) * SECONDS_PER_MINUTE / capacity)


def failed_limits(policy: TenantPolicy, tokens: int, reading: Reading) -> list[Limit]:
    """The limits without room for a request reserving `tokens` (RedisLimiter's script decides the same)."""
    failed = []
    if policy.requests_per_minute is not None and reading.requests_level < 1:
        failed.append(Limit.REQUESTS)
    if policy.tokens_per_minute is not None:
        if tokens > policy.tokens_per_minute:
            failed.append(Limit.REQUEST_TOO_LARGE)
        elif reading.tokens_level < tokens:
            failed.append(Limit.TOKENS)
    if policy.max_concurrent is not None and reading.leases >= policy.max_concurrent:
        failed.append(Limit.CONCURRENCY)
    if policy.budget is not None:
        if tokens > policy.budget.tokens:
            failed.append(Limit.REQUEST_TOO_LARGE)
        elif reading.budget_used + tokens > policy.budget.tokens:
            failed.append(Limit.BUDGET)
    return failed


def refusal(tenant: Tenant, tokens: int, failed: list[Limit], reading: Reading) -> RateLimited:
    """The refusal to answer for the failed limits: a request too large if it is one (waiting
    never helps), else the limit with the longest wait (the client has to wait that long anyway)."""
    if Limit.REQUEST_TOO_LARGE in failed:
        limit, retry_after_seconds = Limit.REQUEST_TOO_LARGE, 0.0
    else:
        waits = {limit: _wait(limit, tenant.policy, tokens, reading) for limit in failed}
        limit = max(waits, key=waits.get)
        retry_after_seconds = waits[limit]
    LIMITED_REQUESTS.labels(tenant.name, limit).inc()
    message = _refusal_message(limit, tenant, tokens, reading, retry_after_seconds)
    return RateLimited(limit, message, retry_after_seconds, limit_state(tenant.policy, reading))


def _wait(limit: Limit, policy: TenantPolicy, tokens: int, reading: Reading) -> float:
    if limit == Limit.REQUESTS:
        return (1 - reading.requests_level) * SECONDS_PER_MINUTE / policy.requests_per_minute
    if limit == Limit.TOKENS:
        return (tokens - reading.tokens_level) * SECONDS_PER_MINUTE / policy.tokens_per_minute
    if limit == Limit.BUDGET:
        return max(0.0, reading.budget_seconds_left)
    return CONCURRENCY_RETRY_SECONDS


def _refusal_message(limit: Limit, tenant: Tenant, tokens: int, reading: Reading, retry_after_seconds: float) -> str:
    policy = tenant.policy
    retry = f"Please try again in {format_reset(retry_after_seconds)}."
    if limit == Limit.REQUEST_TOO_LARGE:
        if policy.tokens_per_minute is not None and tokens > policy.tokens_per_minute:
            where, allowed = "tokens per min (TPM)", policy.tokens_per_minute
        else:
            where, allowed = f"the token budget per {policy.budget.period}", policy.budget.tokens
        return (f"Request too large for {where}: Limit {allowed}, Requested {tokens}. "
                "Lower max_tokens or shorten the prompt.")
    if limit == Limit.REQUESTS:
        return (f"Rate limit reached for tenant {tenant.name} on requests per min (RPM): "
                f"Limit {policy.requests_per_minute}, Remaining {max(0, math.floor(reading.requests_level))}, "
                f"Requested 1. {retry}")
    if limit == Limit.TOKENS:
        return (f"Rate limit reached for tenant {tenant.name} on tokens per min (TPM): "
                f"Limit {policy.tokens_per_minute}, Remaining {max(0, math.floor(reading.tokens_level))}, "
                f"Requested {tokens}. {retry}")
    if limit == Limit.BUDGET:
        return (f"Token budget of tenant {tenant.name} reached for this {policy.budget.period} (UTC): "
                f"Limit {policy.budget.tokens}, Used {reading.budget_used}, Requested {tokens}. "
                f"It renews in {format_reset(retry_after_seconds)}.")
    return (f"Too many concurrent requests for tenant {tenant.name}: Limit {policy.max_concurrent}, "
            f"In flight {reading.leases}. {retry}")


def _unlimited_admission(tenant: Tenant, tokens: int) -> Admission:
    return Admission(tenant, tokens, lease_id=None, period_start=None, state=LimitState())


async def _admit_unlimited(tenant: Tenant, tokens: int) -> Admission:
    """The admission of a tenant without limits (ValueError for a negative reservation)."""
    _check_reservation(tokens)
    return _unlimited_admission(tenant, tokens)


def _check_reservation(tokens: int) -> None:
    if tokens < 0:
        raise ValueError(f"a reservation is a number of tokens >= 0, not {tokens}")


def _start_settling(admission: Admission, used_tokens: int) -> bool:
    """Whether this call settles `admission`: the first one, of an admission that took anything."""
    if used_tokens < 0:
        raise ValueError(f"used tokens are a number >= 0, not {used_tokens}")
    first = not admission.settled
    admission.settled = True
    return first and not admission.unmetered and admission.tenant.policy.limited


def _new_lease_id(policy: TenantPolicy) -> str | None:
    return secrets.token_hex(8) if policy.max_concurrent is not None else None


@dataclass(slots=True)
class TokenBucket:
    """The level of a bucket of `capacity` refilled at capacity/60 per second, when last updated."""

    level: float
    updated_at: float

    def refill(self, capacity: int, now: float) -> float:
        # A clock set back refills nothing rather than draining the bucket.
        elapsed = max(0.0, now - self.updated_at)
        self.level = min(capacity, self.level + elapsed * capacity / SECONDS_PER_MINUTE)
        self.updated_at = now
        return self.level


@dataclass(slots=True)
class TenantUsage:
    """What one tenant holds of its limits, in process."""

    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    lease_expiries: dict[str, float] = field(default_factory=dict)
    period_start: float | None = None
    budget_used: int = 0

    def read(self, policy: TenantPolicy, now: float, period: tuple[float, float] | None) -> Reading:
        if policy.requests_per_minute is not None and self.requests is None:
            self.requests = TokenBucket(policy.requests_per_minute, now)
        if policy.tokens_per_minute is not None and self.tokens is None:
            self.tokens = TokenBucket(policy.tokens_per_minute, now)
        self.lease_expiries = {lease: expiry for lease, expiry in self.lease_expiries.items() if expiry > now}
        if period is not None and period[0] != self.period_start:
            self.period_start, self.budget_used = period[0], 0
        return Reading(
            self.requests.refill(policy.requests_per_minute, now) if policy.requests_per_minute is not None else None,
            self.tokens.refill(policy.tokens_per_minute, now) if policy.tokens_per_minute is not None else None,
            len(self.lease_expiries) if policy.max_concurrent is not None else None,
            self.budget_used if period is not None else None,
            period[1] - now if period is not None else None,
        )

    def take(self, policy: TenantPolicy, tokens: int, lease_id: str | None, lease_expiry: float) -> None:
        if policy.requests_per_minute is not None:
            self.requests.level -= 1
        if policy.tokens_per_minute is not None:
            self.tokens.level -= tokens
        if lease_id is not None:
            self.lease_expiries[lease_id] = lease_expiry
        if policy.budget is not None:
            self.budget_used += tokens


class MemoryLimiter:
    """The limits of one router replica, in process. Each admission reads and takes without
    awaiting, so asyncio runs it whole: no lock is needed."""

    def __init__(self, clock: Clock = time.time, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self._clock = clock
        self._lease_seconds = lease_seconds
        self._usage: dict[str, TenantUsage] = {}

    async def admit(self, tenant: Tenant, tokens: int) -> Admission:
        _check_reservation(tokens)
        policy = tenant.policy
        if not policy.limited:
            return _unlimited_admission(tenant, tokens)
        now = self._clock()
        period = policy.budget.window(now) if policy.budget else None
        usage = self._usage.setdefault(tenant.name, TenantUsage())
        reading = usage.read(policy, now, period)
        failed = failed_limits(policy, tokens, reading)
        if failed:
            raise refusal(tenant, tokens, failed, reading)
        lease_id = _new_lease_id(policy)
        usage.take(policy, tokens, lease_id, now + self._lease_seconds)
        state = limit_state(policy, usage.read(policy, now, period))
        return Admission(tenant, tokens, lease_id, period[0] if period else None, state)

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        if not _start_settling(admission, used_tokens):
            return
        policy, usage = admission.tenant.policy, self._usage[admission.tenant.name]
        if policy.tokens_per_minute is not None:
            level = usage.tokens.refill(policy.tokens_per_minute, self._clock())
            usage.tokens.level = min(policy.tokens_per_minute, level + admission.tokens - used_tokens)
        # A request settled after its budget period ended counted in that period, which is over.
        if policy.budget is not None and usage.period_start == admission.period_start:
            usage.budget_used += used_tokens - admission.tokens
        usage.lease_expiries.pop(admission.lease_id, None)

    async def refresh(self, admission: Admission) -> None:
        if admission.lease_id is None or admission.settled:
            return
        # A lease that expired stays expired: its slot may have been given to another request.
        lease_expiries, now = self._usage[admission.tenant.name].lease_expiries, self._clock()
        if lease_expiries.get(admission.lease_id, now) > now:
            lease_expiries[admission.lease_id] = now + self._lease_seconds

    async def close(self) -> None:
        """Nothing to finish: settlements in process complete when called."""


# Time is Redis's, so that replicas agree on it. A bucket's hash expires when it would be full
# again, as a missing bucket reads full; leases expire with the last of them; a budget counter
# expires a lease after its period, so that requests admitted at its end still settle into it.
# Numbers go back as strings: Redis would truncate Lua numbers to integers.
_REDIS_BUCKET_FUNCTIONS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function exact(number) return string.format('%.17g', number) end

local function level(key, capacity)
  local stored = redis.call('HMGET', key, 'level', 'updated_at')
  if not stored[1] then return capacity end
  local elapsed = math.max(0, now - tonumber(stored[2]))
  return math.min(capacity, tonumber(stored[1]) + elapsed * capacity / 60)
end

local function store(key, capacity, new_level)
  redis.call('HSET', key, 'level', exact(new_level), 'updated_at', exact(now))
  redis.call('PEXPIRE', key, math.max(1, math.ceil((capacity - new_level) * 60000 / capacity)))
end
"""

# KEYS: requests bucket, tokens bucket, leases, budget counter.
# ARGV: requests per minute, tokens per minute, max concurrent, budget tokens (each 0: no such
# limit), budget counter expiry (unix s), tokens reserved, lease id, lease seconds.
# Returns the failed limits (none: admitted) and the reading: requests level, tokens level, leases,
# budget used ('' where no such limit).
ADMIT_SCRIPT = _REDIS_BUCKET_FUNCTIONS + """
local rpm, tpm, max_concurrent, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, lease_seconds = tonumber(ARGV[6]), tonumber(ARGV[8])
local failed = {}
local requests_level, tokens_level, leases, used

if rpm > 0 then
  requests_level = level(KEYS[1], rpm)
  if requests_level < 1 then table.insert(failed, 'requests') end
end
if tpm > 0 then
  tokens_level = level(KEYS[2], tpm)
  if tokens > tpm then table.insert(failed, 'request_too_large')
  elseif tokens_level < tokens then table.insert(failed, 'tokens') end
end
if max_concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', exact(now))
  leases = redis.call('ZCARD', KEYS[3])
  if leases >= max_concurrent then table.insert(failed, 'concurrency') end
end
if budget > 0 then
  used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if tokens > budget then table.insert(failed, 'request_too_large')
  elseif used + tokens > budget then table.insert(failed, 'budget') end
end

if #failed == 0 then
  if rpm > 0 then requests_level = requests_level - 1; store(KEYS[1], rpm, requests_level) end
  if tpm > 0 then tokens_level = tokens_level - tokens; store(KEYS[2], tpm, tokens_level) end
  if max_concurrent > 0 then
    redis.call('ZADD', KEYS[3], exact(now + lease_seconds), ARGV[7])
    redis.call('EXPIRE', KEYS[3], math.ceil(lease_seconds) + 1)
    leases = leases + 1
  end
  if budget > 0 then
    used = redis.call('INCRBY', KEYS[4], tokens)
    redis.call('EXPIREAT', KEYS[4], ARGV[5])
  end
end

local function reply(number) if number == nil then return '' end return exact(number) end
return {failed, reply(requests_level), reply(tokens_level), reply(leases), reply(used)}
"""

# KEYS: tokens bucket, leases, budget counter. ARGV: tokens per minute (0: none), tokens reserved
# minus tokens used, lease id ('': none), whether the tenant has a budget (1/0).
SETTLE_SCRIPT = _REDIS_BUCKET_FUNCTIONS + """
local tpm, unused = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 then store(KEYS[1], tpm, math.min(tpm, level(KEYS[1], tpm) + unused)) end
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
-- A counter gone with its period stays gone: INCRBY would make one that never expires.
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then redis.call('INCRBY', KEYS[3], -unused) end
"""

# KEYS: leases. ARGV: lease id, lease seconds. A lease that expired stays expired, as in process.
REFRESH_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local lease_seconds = tonumber(ARGV[2])
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if expiry and tonumber(expiry) > now then
  redis.call('ZADD', KEYS[1], string.format('%.17g', now + lease_seconds), ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(lease_seconds) + 1)
end
"""

ADMIT, SETTLE, REFRESH = LuaScript(ADMIT_SCRIPT), LuaScript(SETTLE_SCRIPT), LuaScript(REFRESH_SCRIPT)


class RedisLimiter:
    """The limits of all router replicas, in Redis: each admission checks and takes every limit
    of its tenant in one script, so replicas admitting at once never overshoot. When Redis cannot
    be reached, `failure_mode` open admits unmetered and closed raises LimitsUnavailable. Budget
    periods follow `clock` (replicas disagree about a period's boundary only by their clocks' skew)."""

    def __init__(self, store: RedisStore, failure_mode: FailureMode, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 clock: Clock = time.time) -> None:
        self._store = store
        self._failure_mode = failure_mode
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._settling: set[asyncio.Task] = set()

    def admit(self, tenant: Tenant, tokens: int) -> Awaitable[Admission]:
        """The admission, its script sent before this returns (RedisStore.run_script)."""
        policy = tenant.policy
        if tokens < 0 or not policy.limited:
            return _admit_unlimited(tenant, tokens)
        now = self._clock()
        period_start, period_end = policy.budget.window(now) if policy.budget else (None, None)
        lease_id = _new_lease_id(policy)
        budget_expiry = math.ceil(period_end + self._lease_seconds) if policy.budget else 0
        arguments = [policy.requests_per_minute or 0, policy.tokens_per_minute or 0, policy.max_concurrent or 0,
                     policy.budget.tokens if policy.budget else 0, budget_expiry, tokens, lease_id or "",
                     self._lease_seconds]
        sent = self._store.run_script("limits", ADMIT, self._keys(tenant, period_start), arguments)
        return self._admission(sent, tenant, tokens, lease_id, period_start, period_end, now)

    async def _admission(self, sent: Awaitable[Reply], tenant: Tenant, tokens: int, lease_id: str | None,
                         period_start: float | None, period_end: float | None, now: float) -> Admission:
        policy = tenant.policy
        try:
            reply = await sent
        except RedisUnavailable as exc:
            if self._failure_mode == FailureMode.CLOSED:
                raise LimitsUnavailable(f"the limits of tenant {tenant.name} cannot be checked: {exc}") from None
            return Admission(tenant, tokens, None, None, LimitState(), unmetered=True)
        failed = [Limit(name.decode()) for name in reply[0]]
        reading = Reading(*_numbers(reply[1:3], float), *_numbers(reply[3:5], int),
                          period_end - now if policy.budget else None)
        if failed:
            raise refusal(tenant, tokens, failed, reading)
        return Admission(tenant, tokens, lease_id, period_start, limit_state(policy, reading))

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        """Settles in a task of its own that a cancellation of the caller (this is called from a
        `finally`) does not interrupt."""
        if not _start_settling(admission, used_tokens):
            return
        task = asyncio.ensure_future(self._settle_in_redis(admission, used_tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def refresh(self, admission: Admission) -> None:
        if admission.lease_id is None or admission.settled:
            return
        leases_key = self._keys(admission.tenant, None)[2]
        try:
            await self._store.run_script("limits", REFRESH, [leases_key], [admission.lease_id, self._lease_seconds])
        except RedisUnavailable:
            pass  # the lease keeps its expiry; the store has logged the failure

    async def close(self) -> None:
        await asyncio.gather(*self._settling)

    async def _settle_in_redis(self, admission: Admission, used_tokens: int) -> None:
        policy = admission.tenant.policy
        _, tokens_key, leases_key, budget_key = self._keys(admission.tenant, admission.period_start)
        arguments = [policy.tokens_per_minute or 0, admission.tokens - used_tokens, admission.lease_id or "",
                     1 if policy.budget else 0]
        try:
            await self._store.run_script("limits", SETTLE, [tokens_key, leases_key, budget_key], arguments)
        except RedisUnavailable:
            pass  # the lease expires by itself; the tokens stay taken; the store has logged the failure

    def _keys(self, tenant: Tenant, period_start: float | None) -> list[str]:
        # The braces make the tenant's name the hash tag: on a Redis Cluster, the keys one script
        # touches must share a slot.
        tag = "{" + tenant.name + "}"
        budget = f"budget:{int(period_start)}" if period_start is not None else "budget"
        return [self._store.key("limits", tag, name) for name in ("requests", "tokens", "leases", budget)]


def _numbers(replies: list[bytes], kind: type) -> list[float | int | None]:
    return [kind(float(reply)) if reply else None for reply in replies]
