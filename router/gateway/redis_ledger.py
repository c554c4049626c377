"""The usage ledger that router replicas share through Redis, so that GET /v1/usage on any replica
sees every replica's usage. One Lua script appends a record atomically:

- `usage`: a Redis Stream of every record (field `record`, its JSON), the append-only log;
- `usage:hour:<hour>`: per-hour totals (a hash keyed by `["tenant", "model", "requests" |
  "prompt_tokens" | "completion_tokens"]`), by the hour of the record's own timestamp, and
  `usage:hours`, the hours that have any, so totals over whole hours read one hash per hour;
- `usage:seen:<request_id>` (SET NX, expiring after a day): a record already appended is not
  counted again, whether a client retried it or the spool replayed it;
- `usage:late`: records that reached Redis more than a minute from their timestamp (replayed from
  a spool, or a replica's clock off), by timestamp. The hours cut by a period's start or end are
  counted record by record from the stream (entries that arrived within a minute of the edge
  hour) and from this set, so totals are exact to the record for any period.

Appends that arrive while one is in flight go together in the next pipeline. An append is
acknowledged when Redis ran its script: as durable as Redis' own persistence (run it with
`appendonly yes`). When Redis cannot be reached, an append goes to the replica's local SQLite
spool (durable on return) after at most the store's timeout, and the appends after it go straight
there while a background task replays the spool into Redis, in order, until it is empty.
totals() needs Redis: without it, LedgerUnavailable."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import defaultdict
from collections.abc import Awaitable

from router.gateway.group_commit import settle
from router.gateway.redis_pipeline import LuaScript
from router.gateway.redis_store import RedisStore, RedisUnavailable
from router.gateway.sqlite_ledger import SQLiteLedger
from router.gateway.usage_record import LedgerUnavailable, UsageRecord, UsageTotal

logger = logging.getLogger(__name__)

HOUR_SECONDS = 3600
# A record that reaches Redis further than this from its own timestamp is kept in `usage:late`.
LATE_MILLISECONDS = 60_000
# How long a request_id is remembered: longer than any retry or spool replay of its record.
DEDUPE_SECONDS = 24 * 3600
REPLAY_BATCH = 500
REPLAY_RETRY_SECONDS = 0.5
HOURS_PER_CALL = 500
ENTRIES_PER_CALL = 5000
KINDS = ("requests", "prompt_tokens", "completion_tokens")

APPEND = """
-- KEYS: the stream, the hours index, the late records, the record's dedupe key, its hour's totals
-- ARGV: the record's JSON, timestamp and hour; the three totals fields; prompt and completion
--       tokens; the dedupe key's lifetime in seconds; lateness in milliseconds
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[9]) then
  return 0
end
local id = redis.call('XADD', KEYS[1], '*', 'record', ARGV[1])
local arrived_ms = tonumber(string.match(id, '^%d+'))
if math.abs(arrived_ms - tonumber(ARGV[2]) * 1000) > tonumber(ARGV[10]) then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[3])
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
redis.call('HINCRBY', KEYS[5], ARGV[5], ARGV[7])
redis.call('HINCRBY', KEYS[5], ARGV[6], ARGV[8])
return 1
"""
# Sums run in Redis: its replies are parsed in Python at about 30 µs a field, its sums in Lua at
# well under 1 µs. Each call is bounded (HOURS_PER_CALL hashes, ENTRIES_PER_CALL entries) so that
# no script holds Redis for long.
SUM_HOURS = """
-- KEYS: per-hour totals; ARGV: the prefix of the fields to sum ('' for all)
local sums, order = {}, {}
for _, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local field = fields[i]
    if string.sub(field, 1, #ARGV[1]) == ARGV[1] then
      if sums[field] == nil then
        sums[field] = 0
        order[#order + 1] = field
      end
      sums[field] = sums[field] + tonumber(fields[i + 1])
    end
  end
end
local reply = {}
for _, field in ipairs(order) do
  reply[#reply + 1] = field
  reply[#reply + 1] = sums[field]
end
return reply
"""
SUM_ENTRIES = """
-- KEYS: the stream; ARGV: first and last entry ids, how many entries at most, the period's start and
-- end, lateness in milliseconds, the tenant ('' for all). Sums the entries that arrived on time,
-- per tenant and model: the last entry's id ('' when no entry is left), then tenant, model,
-- requests, prompt and completion tokens of each.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local start, finish, lateness = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local sums, order = {}, {}
for _, entry in ipairs(entries) do
  local record = cjson.decode(entry[2][2])
  local arrived_ms = tonumber(string.match(entry[1], '^%d+'))
  local timestamp = record.timestamp
  if math.abs(arrived_ms - timestamp * 1000) <= lateness and timestamp >= start and timestamp < finish
      and (ARGV[7] == '' or record.tenant == ARGV[7]) then
    sums[record.tenant] = sums[record.tenant] or {}
    local sum = sums[record.tenant][record.model]
    if sum == nil then
      sum = {record.tenant, record.model, 0, 0, 0}
      sums[record.tenant][record.model] = sum
      order[#order + 1] = sum
    end
    sum[3] = sum[3] + 1
    sum[4] = sum[4] + record.prompt_tokens
    sum[5] = sum[5] + record.completion_tokens
  end
end
local reply = {#entries == tonumber(ARGV[3]) and entries[#entries][1] or ''}
for _, sum in ipairs(order) do
  for _, value in ipairs(sum) do
    reply[#reply + 1] = value
  end
end
return reply
"""


APPEND_SCRIPT = LuaScript(APPEND)


class RedisLedger:
    """The shared usage ledger, with `spool` for the records Redis could not take."""

    def __init__(self, store: RedisStore, spool: SQLiteLedger) -> None:
        self._store = store
        self._spool = spool
        self._sum_hours = store.client.register_script(SUM_HOURS)
        self._sum_entries = store.client.register_script(SUM_ENTRIES)
        self._stream = store.key("usage")
        self._hours = store.key("usage", "hours")
        self._late = store.key("usage", "late")
        # While the spool holds records, appends join them there rather than wait on Redis.
        self._spooling = False
        self._replay_needed = True  # the spool may hold records of an earlier run
        self._replay: asyncio.Task | None = None
        self._outbox: list[tuple[UsageRecord, asyncio.Future]] = []
        self._sender: asyncio.Task | None = None

    async def append(self, record: UsageRecord) -> None:
        if not self._spooling:
            try:
                await self._send_with_others(record)
                self._start_replay()
                return
            except RedisUnavailable:
                self._spooling = True
        await self._spool.append(record)
        self._replay_needed = True
        self._start_replay()

    async def totals(self, tenant: str | None, start: float, end: float) -> list[UsageTotal]:
        self._start_replay()
        sums: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
        try:
            for edge_start, edge_end in await self._add_whole_hours(sums, tenant, start, end):
                await self._add_records(sums, tenant, edge_start, edge_end)
        except RedisUnavailable as exc:
            raise LedgerUnavailable(f"usage totals need Redis: {exc}") from None
        return [UsageTotal(tenant_name, model, **counts) for (tenant_name, model), counts in sorted(sums.items())]

    async def close(self) -> None:
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._replay is not None:
            self._replay.cancel()
            await asyncio.gather(self._replay, return_exceptions=True)
        await self._spool.close()

    async def _send_with_others(self, record: UsageRecord) -> None:
        """Sends `record` in the next pipeline: the appends that arrive while one is in flight
        go together in the next, one round trip for all of them."""
        sent = asyncio.get_running_loop().create_future()
        self._outbox.append((record, sent))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_outbox(), name="usage-ledger-sender")
        await asyncio.shield(sent)

    async def _send_outbox(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                await self._forward([record for record, _ in batch])
                error = None
            except RedisUnavailable as exc:
                error = exc
                # Those that queued meanwhile fail with it, rather than wait for another timeout.
                batch, self._outbox = batch + self._outbox, []
            settle([sent for _, sent in batch], error)

    def _append(self, record: UsageRecord) -> Awaitable[int]:
        """Whether Redis took `record` as new (1) or had it (0); sent before this returns."""
        hour = int(record.timestamp // HOUR_SECONDS)
        keys = [self._stream, self._hours, self._late, self._store.key("usage", "seen", record.request_id),
                self._store.key("usage", "hour", str(hour))]
        fields = [json.dumps([record.tenant, record.model, kind]) for kind in KINDS]
        return self._store.run_script("ledger", APPEND_SCRIPT, keys, [
            record.to_json(), repr(record.timestamp), hour, *fields, record.prompt_tokens, record.completion_tokens,
            DEDUPE_SECONDS, LATE_MILLISECONDS])

    def _start_replay(self) -> None:
        if self._replay_needed and (self._replay is None or self._replay.done()):
            self._replay = asyncio.create_task(self._replay_spool(), name="usage-ledger-replay")

    async def _replay_spool(self) -> None:
        """Forwards the spool's records to Redis in batches until none is left, retrying while
        Redis cannot be reached. Each batch's position is stored once Redis took it; a replay cut
        between the two sends the batch again, and the dedupe keys drop what Redis already has."""
        while True:
            self._replay_needed = False
            try:
                batch = await self._spool.unforwarded(REPLAY_BATCH)
                if not batch:
                    if self._replay_needed:
                        continue
                    self._spooling = False
                    return
                appended = await self._forward([record for _, record in batch])
                await self._spool.mark_forwarded(batch[-1][0])
                logger.info("replayed %d spooled usage records into Redis (%d new)", len(batch), appended)
            except (RedisUnavailable, LedgerUnavailable) as exc:
                self._replay_needed = True
                logger.debug("spooled usage not replayed yet: %s", exc)
                await asyncio.sleep(REPLAY_RETRY_SECONDS)

    async def _forward(self, records: list[UsageRecord]) -> int:
        """Appends `records`, their scripts in one write (RedisStore.run_script); how many were new
        to Redis. RedisUnavailable if any failed."""
        replies = await asyncio.gather(*[self._append(record) for record in records], return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return sum(replies)

    async def _add_whole_hours(self, sums: dict, tenant: str | None, start: float,
                               end: float) -> list[tuple[float, float]]:
        """Adds the per-hour totals of the hours within [start, end) to `sums`; returns the
        parts of the period outside them, to count record by record."""
        first_hour, end_hour = math.ceil(start / HOUR_SECONDS), math.floor(end / HOUR_SECONDS)
        if first_hour >= end_hour:
            return [(start, end)] if start < end else []
        hours = await self._store.call("ledger", self._store.client.zrangebyscore(self._hours, first_hour,
                                                                                  f"({end_hour}"))
        fields_prefix = "" if tenant is None else json.dumps([tenant])[:-1] + ", "
        for offset in range(0, len(hours), HOURS_PER_CALL):
            keys = [self._store.key("usage", "hour", hour.decode()) for hour in hours[offset:offset + HOURS_PER_CALL]]
            reply = await self._store.call("ledger", self._sum_hours(keys=keys, args=[fields_prefix]))
            for field, value in zip(reply[::2], reply[1::2], strict=True):
                field_tenant, model, kind = json.loads(field)
                sums[field_tenant, model][kind] += value
        edges = [(start, first_hour * HOUR_SECONDS), (end_hour * HOUR_SECONDS, end)]
        return [(edge_start, edge_end) for edge_start, edge_end in edges if edge_start < edge_end]

    async def _add_records(self, sums: dict, tenant: str | None, start: float, end: float) -> None:
        """Adds the records with start <= timestamp < end: those the stream took within a minute
        of the period, and the late ones."""
        cursor = str(max(0, math.floor(start * 1000) - LATE_MILLISECONDS))
        last = str(math.ceil(end * 1000) + LATE_MILLISECONDS)
        while cursor:
            reply = await self._store.call("ledger", self._sum_entries(
                keys=[self._stream],
                args=[cursor, last, ENTRIES_PER_CALL, repr(start), repr(end), LATE_MILLISECONDS, tenant or ""]))
            for offset in range(1, len(reply), 5):
                record_tenant, model, requests, prompt_tokens, completion_tokens = reply[offset:offset + 5]
                _add(sums, record_tenant.decode(), model.decode(), requests, prompt_tokens, completion_tokens)
            cursor = "(" + reply[0].decode() if reply[0] else ""
        late = await self._store.call("ledger", self._store.client.zrangebyscore(self._late, repr(start),
                                                                                 f"({end!r}"))
        for record in map(UsageRecord.from_json, late):
            if tenant is None or record.tenant == tenant:
                _add(sums, record.tenant, record.model, 1, record.prompt_tokens, record.completion_tokens)


def _add(sums: dict, tenant: str, model: str, requests: int, prompt_tokens: int, completion_tokens: int) -> None:
    counts = sums[tenant, model]
    counts["requests"] += requests
    counts["prompt_tokens"] += prompt_tokens
    counts["completion_tokens"] += completion_tokens
