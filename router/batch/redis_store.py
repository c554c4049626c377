"""The batch store on Redis, shared by the router's replicas: they drain one queue, a Stream read
through one consumer group, so each line goes to one replica at a time and a replica that dies
leaves its lines to the others.

A line's lease is the idle time of its Stream entry: claim() takes first the entries no consumer
has touched for `lease_seconds` (XAUTOCLAIM, which counts the delivery), then new ones
(XREADGROUP). renew() touches a consumer's entries again (XCLAIM to the same consumer), so a
worker renews more often than its lease; `lease_seconds` in renew() is therefore unused, since
the lease each claim() applies is the one it is called with. Deliveries are Redis's own delivery
counter of the pending entry.

Keys, under the RedisStore's prefix:
  batch:file:<id>                         hash: record (FileRecord JSON), content
  batch:files-by-tenant:<tenant>          sorted set of file ids, by created_at then id
  batch:files-by-purpose:<purpose>:<tenant>  the same, one purpose
  batch:batch:<id>                        hash: a BatchRecord field each (JSON), times.<name> each
  batch:batches-by-tenant:<tenant>        sorted set of batch ids, by created_at then id
  batch:active                            set of the ids of batches in ACTIVE_STATUSES
  batch:background                        sorted set of the ids of background requests, by created_at
                                          (they are in no batches-by-tenant: /v1/batches never lists them)
  batch:results:<batch id>                hash: custom_id -> "<index> <ok> <line>"
  batch:counts:<batch id>                 hash: completed, failed
  batch:queue                             the Stream of lines, consumer group `workers`

A batch is a hash of fields rather than one JSON document so that `transition`'s script sets
fields without decoding JSON in Lua (whose cjson turns an empty list into `{}`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ResponseError

from router.batch.store import (
    ACTIVE_STATUSES,
    BatchKind,
    BatchRecord,
    BatchStatus,
    BatchStoreUnavailable,
    FileRecord,
    LineResult,
    WorkItem,
    batch_from_dict,
    batch_to_dict,
    check_changes,
)
from router.gateway.redis_store import RedisStore, RedisUnavailable, milliseconds

GROUP = "workers"
TIMES_FIELD = "times."
# The label of this store's failures in gateway_redis_errors_total.
USE = "batch"

# KEYS: a sorted set. ARGV: after ('' for the start), limit, '1' for descending. The ids after
# `after`, read in one step so that no write between finding `after` and reading shifts the page.
PAGE_SCRIPT = """
local start = 0
if ARGV[1] ~= '' then
    local rank
    if ARGV[3] == '1' then
        rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
    else
        rank = redis.call('ZRANK', KEYS[1], ARGV[1])
    end
    if not rank then
        return {}
    end
    start = rank + 1
end
local stop = start + tonumber(ARGV[2]) - 1
if ARGV[3] == '1' then
    return redis.call('ZREVRANGE', KEYS[1], start, stop)
end
return redis.call('ZRANGE', KEYS[1], start, stop)
"""

# KEYS: the batch's hash, the set of active batches. ARGV: batch id, the new status (JSON), its
# times field, the time, '1' when the new status is active, n, n allowed statuses (JSON), then
# field/value pairs of changes. The batch's fields after, or nil when its status was another.
TRANSITION_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
    return false
end
local allowed_count = tonumber(ARGV[6])
local allowed = false
for position = 7, 6 + allowed_count do
    if ARGV[position] == status then
        allowed = true
    end
end
if not allowed then
    return false
end
local fields = {'status', ARGV[2], ARGV[3], ARGV[4]}
for position = 7 + allowed_count, #ARGV do
    table.insert(fields, ARGV[position])
end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[5] == '1' then
    redis.call('SADD', KEYS[2], ARGV[1])
else
    redis.call('SREM', KEYS[2], ARGV[1])
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: the batch's results, its counts. ARGV: custom_id, the encoded result, the count it adds
# to (completed or failed). {kept (1 or 0), completed, failed}.
RECORD_RESULT_SCRIPT = """
local kept = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if kept == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
end
local counts = redis.call('HMGET', KEYS[2], 'completed', 'failed')
return {kept, tonumber(counts[1]) or 0, tonumber(counts[2]) or 0}
"""

# KEYS: the stream. ARGV: group, consumer, count, lease in milliseconds. Entries idle for the
# lease first (their consumer stopped renewing), then new ones: {id, fields, deliveries} each.
CLAIM_SCRIPT = """
local count = tonumber(ARGV[3])
local claimed = {}
local cursor = '0-0'
repeat
    local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], cursor, 'COUNT', count - #claimed)
    cursor = reply[1]
    for _, entry in ipairs(reply[2]) do
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
        table.insert(claimed, {entry[1], entry[2], pending[1][4]})
    end
until cursor == '0-0' or #claimed >= count
if #claimed < count then
    local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count - #claimed,
                             'STREAMS', KEYS[1], '>')
    if reply then
        for _, entry in ipairs(reply[1][2]) do
            table.insert(claimed, {entry[1], entry[2], 1})
        end
    end
end
return claimed
"""

# KEYS: the stream. ARGV: group, consumer, entry ids. Touches the entries still pending for this
# consumer (XCLAIM resets their idle time); one another consumer claimed meanwhile stays its.
RENEW_SCRIPT = """
for position = 3, #ARGV do
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[position], ARGV[position], 1)
    if pending[1] and pending[1][2] == ARGV[2] then
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[position], 'JUSTID')
    end
end
return 0
"""

Result = TypeVar("Result")


class RedisBatchStore:
    """The batch store under `redis`'s key prefix. The connection stays the caller's: close()
    leaves it open for the gateway's other uses."""

    def __init__(self, redis: RedisStore) -> None:
        self.redis = redis
        self._client = redis.client
        self._queue_key = redis.key("batch", "queue")
        self._active_key = redis.key("batch", "active")
        self._background_key = redis.key("batch", "background")
        self._page = self._client.register_script(PAGE_SCRIPT)
        self._transition = self._client.register_script(TRANSITION_SCRIPT)
        self._record_result = self._client.register_script(RECORD_RESULT_SCRIPT)
        self._claim = self._client.register_script(CLAIM_SCRIPT)
        self._renew = self._client.register_script(RENEW_SCRIPT)
        self._group_exists = False

    # Files ------------------------------------------------------------------------------
    async def add_file(self, record: FileRecord, content: bytes) -> None:
        await self._call("add a file", self._add_file(record, content))

    async def file(self, file_id: str) -> FileRecord | None:
        raw = await self._call("read a file", self._client.hget(self._file_key(file_id), "record"))
        return None if raw is None else _file(raw)

    async def file_content(self, file_id: str) -> bytes | None:
        return await self._call("read a file's content", self._client.hget(self._file_key(file_id), "content"))

    async def files(self, tenant: str, purpose: str | None, after: str | None, limit: int,
                    descending: bool) -> list[FileRecord]:
        listing = self._files_key(tenant, purpose)
        file_ids = await self._call("list files", self._page_of(listing, after, limit, descending))
        if not file_ids:
            return []
        pipeline = self._client.pipeline(transaction=False)
        for file_id in file_ids:
            pipeline.hget(self._file_key(file_id.decode()), "record")
        records = await self._call("list files", pipeline.execute())
        # A file deleted between the two reads is left out.
        return [_file(raw) for raw in records if raw is not None]

    async def delete_file(self, file_id: str) -> bool:
        return await self._call("delete a file", self._delete_file(file_id))

    # Batches ----------------------------------------------------------------------------
    async def add_batch(self, record: BatchRecord, lines: list[tuple[str, bytes]]) -> None:
        await self._call("add a batch", self._add_batch(record, lines))

    async def batch(self, batch_id: str) -> BatchRecord | None:
        fields = await self._call("read a batch", self._client.hgetall(self._batch_key(batch_id)))
        return _batch(fields) if fields else None

    async def batches(self, tenant: str, after: str | None, limit: int) -> list[BatchRecord]:
        listing = self.redis.key("batch", "batches-by-tenant", tenant)
        batch_ids = await self._call("list batches", self._page_of(listing, after, limit, descending=True))
        return await self._batches([batch_id.decode() for batch_id in batch_ids])

    async def active_batches(self) -> list[BatchRecord]:
        batch_ids = await self._call("list active batches", self._client.smembers(self._active_key))
        records = await self._batches([batch_id.decode() for batch_id in batch_ids])
        return sorted(records, key=lambda record: (record.created_at, record.id))

    async def background_requests(self, created_before: int, limit: int) -> list[BatchRecord]:
        batch_ids = await self._call("list background requests", self._client.zrangebyscore(
            self._background_key, "-inf", f"({created_before}", start=0, num=limit))
        return await self._batches([batch_id.decode() for batch_id in batch_ids])

    async def delete_batch(self, batch_id: str) -> None:
        transaction = self._client.pipeline(transaction=True)
        transaction.delete(self._batch_key(batch_id), self._results_key(batch_id), self._counts_key(batch_id))
        transaction.zrem(self._background_key, batch_id)
        transaction.srem(self._active_key, batch_id)
        await self._call("delete a batch", transaction.execute())

    async def transition(self, batch_id: str, from_statuses: frozenset[BatchStatus], to: BatchStatus,
                         at: int, **changes: object) -> BatchRecord | None:
        check_changes(changes)
        arguments: list[str | int] = [batch_id, json.dumps(to), f"{TIMES_FIELD}{to}_at", at,
                                      "1" if to in ACTIVE_STATUSES else "0", len(from_statuses),
                                      *(json.dumps(status) for status in from_statuses)]
        for name, value in changes.items():
            arguments += [name, json.dumps(value)]
        fields = await self._call(f"move a batch to {to}", self._transition(
            keys=[self._batch_key(batch_id), self._active_key], args=arguments))
        return None if fields is None else _batch(dict(zip(fields[::2], fields[1::2])))

    # Results ----------------------------------------------------------------------------
    async def record_result(self, batch_id: str, result: LineResult) -> tuple[bool, int, int]:
        encoded = b"%d %d " % (result.index, result.ok) + result.line
        kept, completed, failed = await self._call("record a result", self._record_result(
            keys=[self._results_key(batch_id), self._counts_key(batch_id)],
            args=[result.custom_id, encoded, "completed" if result.ok else "failed"]))
        return bool(kept), completed, failed

    async def has_result(self, batch_id: str, custom_id: str) -> bool:
        return bool(await self._call("read a result", self._client.hexists(self._results_key(batch_id), custom_id)))

    async def counts(self, batch_id: str) -> tuple[int, int]:
        completed, failed = await self._call("count results",
                                             self._client.hmget(self._counts_key(batch_id), "completed", "failed"))
        return int(completed or 0), int(failed or 0)

    async def results(self, batch_id: str) -> list[LineResult]:
        stored = await self._call("read results", self._client.hgetall(self._results_key(batch_id)))
        return sorted((_result(custom_id, encoded) for custom_id, encoded in stored.items()),
                      key=lambda result: result.index)

    # The queue --------------------------------------------------------------------------
    async def claim(self, consumer: str, count: int, lease_seconds: float) -> list[WorkItem]:
        if count <= 0:
            return []
        entries = await self._call("claim lines", self._with_group(lambda: self._claim(
            keys=[self._queue_key], args=[GROUP, consumer, count, milliseconds(lease_seconds)])))
        return [_work_item(entry_id, fields, deliveries) for entry_id, fields, deliveries in entries]

    async def renew(self, consumer: str, items: list[WorkItem], lease_seconds: float) -> None:
        if items:
            await self._call("renew leases", self._with_group(lambda: self._renew(
                keys=[self._queue_key], args=[GROUP, consumer, *(item.receipt for item in items)])))

    async def ack(self, items: list[WorkItem]) -> None:
        if not items:
            return
        receipts = [item.receipt for item in items]
        pipeline = self._client.pipeline(transaction=True)
        pipeline.xack(self._queue_key, GROUP, *receipts)
        pipeline.xdel(self._queue_key, *receipts)
        await self._call("ack lines", pipeline.execute())

    async def close(self) -> None:
        """Nothing of its own to close: the RedisStore is the caller's."""

    # Helpers ----------------------------------------------------------------------------
    async def _call(self, what: str, operation: Awaitable[Result]) -> Result:
        """`operation` through the RedisStore (bounded in time, counted when it fails); a failure
        becomes BatchStoreUnavailable saying `what` failed."""
        try:
            return await self.redis.call(USE, operation)
        except RedisUnavailable as exc:
            raise BatchStoreUnavailable(f"batch store could not {what}: {exc}") from exc

    async def _page_of(self, listing: str, after: str | None, limit: int, descending: bool) -> list[bytes]:
        if limit <= 0:
            return []
        return await self._page(keys=[listing], args=[after or "", limit, "1" if descending else "0"])

    async def _batches(self, batch_ids: list[str]) -> list[BatchRecord]:
        if not batch_ids:
            return []
        pipeline = self._client.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipeline.hgetall(self._batch_key(batch_id))
        stored = await self._call("read batches", pipeline.execute())
        return [_batch(fields) for fields in stored if fields]

    async def _add_file(self, record: FileRecord, content: bytes) -> None:
        key = self._file_key(record.id)
        previous = await self._client.hget(key, "record")
        transaction = self._client.pipeline(transaction=True)
        if previous is not None:
            # A file's tenant and purpose never change in the router (its ids are new, and
            # finalizing again writes the same file); should they, the old listings forget it.
            old = _file(previous)
            transaction.zrem(self._files_key(old.tenant, None), old.id)
            transaction.zrem(self._files_key(old.tenant, old.purpose), old.id)
        transaction.hset(key, mapping={"record": json.dumps(dataclasses.asdict(record)), "content": content})
        transaction.zadd(self._files_key(record.tenant, None), {record.id: record.created_at})
        transaction.zadd(self._files_key(record.tenant, record.purpose), {record.id: record.created_at})
        await transaction.execute()

    async def _delete_file(self, file_id: str) -> bool:
        key = self._file_key(file_id)
        stored = await self._client.hget(key, "record")
        if stored is None:
            return False
        record = _file(stored)
        transaction = self._client.pipeline(transaction=True)
        transaction.delete(key)
        transaction.zrem(self._files_key(record.tenant, None), file_id)
        transaction.zrem(self._files_key(record.tenant, record.purpose), file_id)
        deleted, _, _ = await transaction.execute()
        return deleted == 1

    async def _add_batch(self, record: BatchRecord, lines: list[tuple[str, bytes]]) -> None:
        await self._ensure_group()
        key = self._batch_key(record.id)
        transaction = self._client.pipeline(transaction=True)
        transaction.delete(key)
        transaction.hset(key, mapping=_batch_fields(record))
        if record.kind is BatchKind.BACKGROUND:
            transaction.zadd(self._background_key, {record.id: record.created_at})
        else:
            transaction.zadd(self.redis.key("batch", "batches-by-tenant", record.tenant), {record.id: record.created_at})
        if record.status in ACTIVE_STATUSES:
            transaction.sadd(self._active_key, record.id)
        for index, (custom_id, body) in enumerate(lines):
            transaction.xadd(self._queue_key, {"batch_id": record.id, "index": index, "custom_id": custom_id,
                                               "body": body})
        await transaction.execute()

    async def _with_group(self, operation: Callable[[], Awaitable[Result]]) -> Result:
        """`operation()` (a script on the queue) once the consumer group exists; again, once,
        should the group have gone (the stream's key deleted, Redis emptied)."""
        await self._ensure_group()
        try:
            return await operation()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_exists = False
            await self._ensure_group()
            return await operation()

    async def _ensure_group(self) -> None:
        if self._group_exists:
            return
        try:
            # From the stream's start: lines added before the group existed are claimed too
            # (acked lines are deleted, so the start is the oldest line not done).
            await self._client.xgroup_create(self._queue_key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_exists = True

    def _file_key(self, file_id: str) -> str:
        return self.redis.key("batch", "file", file_id)

    def _files_key(self, tenant: str, purpose: str | None) -> str:
        # The purpose (a fixed word) before the tenant, so that no tenant name makes two keys meet.
        if purpose is None:
            return self.redis.key("batch", "files-by-tenant", tenant)
        return self.redis.key("batch", "files-by-purpose", purpose, tenant)

    def _batch_key(self, batch_id: str) -> str:
        return self.redis.key("batch", "batch", batch_id)

    def _results_key(self, batch_id: str) -> str:
        return self.redis.key("batch", "results", batch_id)

    def _counts_key(self, batch_id: str) -> str:
        return self.redis.key("batch", "counts", batch_id)


def _file(raw: bytes) -> FileRecord:
    return FileRecord(**json.loads(raw))


def _batch_fields(record: BatchRecord) -> dict[str, str]:
    data = batch_to_dict(record)
    times = data.pop("times")
    return {**{name: json.dumps(value) for name, value in data.items()},
            **{f"{TIMES_FIELD}{name}": str(at) for name, at in times.items()}}


def _batch(fields: dict[bytes, bytes]) -> BatchRecord:
    data: dict = {"times": {}}
    for name, value in fields.items():
        name = name.decode()
        if name.startswith(TIMES_FIELD):
            data["times"][name.removeprefix(TIMES_FIELD)] = int(value)
        else:
            data[name] = json.loads(value)
    return batch_from_dict(data)


def _result(custom_id: bytes, encoded: bytes) -> LineResult:
    index, ok, line = encoded.split(b" ", 2)
    return LineResult(int(index), custom_id.decode(), ok == b"1", line)


def _work_item(entry_id: bytes, fields: list[bytes], deliveries: int) -> WorkItem:
    entry = dict(zip(fields[::2], fields[1::2]))
    return WorkItem(entry[b"batch_id"].decode(), int(entry[b"index"]), entry[b"custom_id"].decode(),
                    entry[b"body"], entry_id.decode(), int(deliveries))
