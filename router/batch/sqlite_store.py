"""The batch store in one SQLite file, for a router without Redis: WAL mode with synchronous=FULL,
so whatever a call wrote is on disk when it returns and survives kill -9. Every write is one
`BEGIN IMMEDIATE` transaction with a busy timeout, so two router processes on one machine may
share the file: claims never hand one line to both while it is leased.

One thread owns the connection and runs the calls one after another (the event loop never waits
on the disk); a caller cancelled meanwhile does not take its call back, it runs to the end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

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

logger = logging.getLogger(__name__)

# How long a write waits for another process's transaction on the same file before it fails.
BUSY_TIMEOUT_SECONDS = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    content BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_tenant ON files (tenant, created_at, id);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_tenant ON batches (tenant, created_at, id);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status);
-- The sweeper's look for background requests past their retention (background_requests).
CREATE INDEX IF NOT EXISTS batches_by_kind ON batches (json_extract(record, '$.kind'), created_at);
-- AUTOINCREMENT: a position (a WorkItem's receipt) is never reused, so a stale receipt can
-- never renew or ack another line.
CREATE TABLE IF NOT EXISTS queue (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL,
    line_index INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body BLOB NOT NULL,
    consumer TEXT,
    lease_until REAL,
    deliveries INTEGER NOT NULL DEFAULT 0
);
-- Never-claimed lines (lease_until NULL) come first in this index, in queue order.
CREATE INDEX IF NOT EXISTS queue_by_lease ON queue (lease_until, position);
CREATE TABLE IF NOT EXISTS results (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    line_index INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    line BLOB NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
);
-- Kept with each result rather than counted: a batch of 50,000 lines would otherwise count
-- 50,000 rows per recorded line.
CREATE TABLE IF NOT EXISTS result_counts (
    batch_id TEXT PRIMARY KEY,
    completed INTEGER NOT NULL,
    failed INTEGER NOT NULL
);
"""

FILE_COLUMNS = "id, tenant, purpose, filename, bytes, created_at, expires_at"
QUEUE_COLUMNS = "position, batch_id, line_index, custom_id, body, deliveries"
# A batch's kind, read from its record: NULL in records stored before kinds existed (batches).
KIND = "json_extract(record, '$.kind')"
COUNT_RESULT = ("INSERT INTO result_counts (batch_id, completed, failed) VALUES (?, ?, ?) ON CONFLICT (batch_id) "
                "DO UPDATE SET completed = completed + excluded.completed, failed = failed + excluded.failed")

Result = TypeVar("Result")


class SQLiteBatchStore:
    """The batch store in the SQLite file at `path` (created with its folder if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._connection = _open(self.path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-store:{self.path.name}")

    # Files ------------------------------------------------------------------------------
    async def add_file(self, record: FileRecord, content: bytes) -> None:
        await self._run("add a file", self._execute, f"INSERT OR REPLACE INTO files ({FILE_COLUMNS}, content) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (*_file_values(record), content))

    async def file(self, file_id: str) -> FileRecord | None:
        rows = await self._run("read a file", self._read, f"SELECT {FILE_COLUMNS} FROM files WHERE id = ?",
                               (file_id,))
        return FileRecord(*rows[0]) if rows else None

    async def file_content(self, file_id: str) -> bytes | None:
        rows = await self._run("read a file's content", self._read, "SELECT content FROM files WHERE id = ?",
                               (file_id,))
        return rows[0][0] if rows else None

    async def files(self, tenant: str, purpose: str | None, after: str | None, limit: int,
                    descending: bool) -> list[FileRecord]:
        same_listing = "tenant = ?" + ("" if purpose is None else " AND purpose = ?")
        listing_parameters = (tenant,) if purpose is None else (tenant, purpose)
        sql = f"SELECT {FILE_COLUMNS} FROM files WHERE {same_listing}"
        parameters: tuple = listing_parameters
        if after is not None:
            # An `after` outside this listing (unknown, deleted, another tenant's) gives no rows.
            sql += (f" AND (created_at, id) {'<' if descending else '>'} "
                    f"(SELECT created_at, id FROM files WHERE id = ? AND {same_listing})")
            parameters += (after, *listing_parameters)
        order = "DESC" if descending else "ASC"
        sql += f" ORDER BY created_at {order}, id {order} LIMIT ?"
        rows = await self._run("list files", self._read, sql, (*parameters, limit))
        return [FileRecord(*row) for row in rows]

    async def delete_file(self, file_id: str) -> bool:
        return await self._run("delete a file", self._execute, "DELETE FROM files WHERE id = ?", (file_id,)) > 0

    # Batches ----------------------------------------------------------------------------
    async def add_batch(self, record: BatchRecord, lines: list[tuple[str, bytes]]) -> None:
        await self._run("add a batch", self._add_batch, record, lines)

    async def batch(self, batch_id: str) -> BatchRecord | None:
        rows = await self._run("read a batch", self._read, "SELECT record FROM batches WHERE id = ?", (batch_id,))
        return _batch(rows[0][0]) if rows else None

    async def batches(self, tenant: str, after: str | None, limit: int) -> list[BatchRecord]:
        sql = f"SELECT record FROM batches WHERE tenant = ? AND {KIND} IS NOT ?"
        parameters: tuple = (tenant, BatchKind.BACKGROUND)
        if after is not None:
            sql += " AND (created_at, id) < (SELECT created_at, id FROM batches WHERE id = ? AND tenant = ?)"
            parameters += (after, tenant)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        rows = await self._run("list batches", self._read, sql, (*parameters, limit))
        return [_batch(row[0]) for row in rows]

    async def active_batches(self) -> list[BatchRecord]:
        placeholders = ", ".join("?" * len(ACTIVE_STATUSES))
        rows = await self._run("list active batches", self._read,
                               f"SELECT record FROM batches WHERE status IN ({placeholders}) ORDER BY created_at, id",
                               tuple(ACTIVE_STATUSES))
        return [_batch(row[0]) for row in rows]

    async def background_requests(self, created_before: int, limit: int) -> list[BatchRecord]:
        rows = await self._run("list background requests", self._read,
                               f"SELECT record FROM batches WHERE {KIND} = ? AND created_at < ? "
                               "ORDER BY created_at, id LIMIT ?", (BatchKind.BACKGROUND, created_before, limit))
        return [_batch(row[0]) for row in rows]

    async def delete_batch(self, batch_id: str) -> None:
        await self._run("delete a batch", self._delete_batch, batch_id)

    async def transition(self, batch_id: str, from_statuses: frozenset[BatchStatus], to: BatchStatus,
                         at: int, **changes: object) -> BatchRecord | None:
        check_changes(changes)
        return await self._run(f"move a batch to {to}", self._transition, batch_id, from_statuses, to, at, changes)

    # Results ----------------------------------------------------------------------------
    async def record_result(self, batch_id: str, result: LineResult) -> tuple[bool, int, int]:
        return await self._run("record a result", self._record_result, batch_id, result)

    async def has_result(self, batch_id: str, custom_id: str) -> bool:
        rows = await self._run("read a result", self._read,
                               "SELECT 1 FROM results WHERE batch_id = ? AND custom_id = ?", (batch_id, custom_id))
        return bool(rows)

    async def counts(self, batch_id: str) -> tuple[int, int]:
        rows = await self._run("count results", self._read,
                               "SELECT completed, failed FROM result_counts WHERE batch_id = ?", (batch_id,))
        return (rows[0][0], rows[0][1]) if rows else (0, 0)

    async def results(self, batch_id: str) -> list[LineResult]:
        rows = await self._run("read results", self._read,
                               "SELECT line_index, custom_id, ok, line FROM results WHERE batch_id = ? "
                               "ORDER BY line_index", (batch_id,))
        return [LineResult(index, custom_id, bool(ok), line) for index, custom_id, ok, line in rows]

    # The queue --------------------------------------------------------------------------
    async def claim(self, consumer: str, count: int, lease_seconds: float) -> list[WorkItem]:
        return await self._run("claim lines", self._claim, consumer, count, lease_seconds)

    async def renew(self, consumer: str, items: list[WorkItem], lease_seconds: float) -> None:
        # Only leases still this consumer's: a line already reclaimed by another stays with it.
        await self._run("renew leases", self._execute_many,
                        "UPDATE queue SET lease_until = ? WHERE position = ? AND consumer = ?",
                        [(time.time() + lease_seconds, int(item.receipt), consumer) for item in items])

    async def ack(self, items: list[WorkItem]) -> None:
        await self._run("ack lines", self._execute_many, "DELETE FROM queue WHERE position = ?",
                        [(int(item.receipt),) for item in items])

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._connection.close)
        self._thread.shutdown(wait=True)

    # On the store's thread --------------------------------------------------------------
    async def _run(self, what: str, operation: Callable[..., Result], *arguments: object) -> Result:
        """`operation(*arguments)` on the store's thread; a SQLite failure becomes
        BatchStoreUnavailable saying `what` failed."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, operation, *arguments)
        except sqlite3.Error as exc:
            logger.error("batch store %s could not %s: %s", self.path, what, exc)
            raise BatchStoreUnavailable(f"batch store {self.path} could not {what}: {exc}") from exc
        except RuntimeError as exc:  # the thread was shut down: close() has run
            raise BatchStoreUnavailable(f"batch store {self.path} is closed ({what})") from exc

    def _read(self, sql: str, parameters: tuple) -> list[tuple]:
        return self._connection.execute(sql, parameters).fetchall()

    def _execute(self, sql: str, parameters: tuple) -> int:
        """Runs one write statement in its own transaction; the rows it changed."""
        with _immediate(self._connection):
            return self._connection.execute(sql, parameters).rowcount

    def _execute_many(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            with _immediate(self._connection):
                self._connection.executemany(sql, rows)

    def _add_batch(self, record: BatchRecord, lines: list[tuple[str, bytes]]) -> None:
        with _immediate(self._connection):
            self._connection.execute(
                "INSERT INTO batches (id, tenant, status, created_at, record) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.tenant, record.status, record.created_at, _batch_json(record)))
            self._connection.executemany(
                "INSERT INTO queue (batch_id, line_index, custom_id, body) VALUES (?, ?, ?, ?)",
                [(record.id, index, custom_id, body) for index, (custom_id, body) in enumerate(lines)])

    def _delete_batch(self, batch_id: str) -> None:
        with _immediate(self._connection):
            for table in ("batches", "queue", "results", "result_counts"):
                column = "id" if table == "batches" else "batch_id"
                self._connection.execute(f"DELETE FROM {table} WHERE {column} = ?", (batch_id,))

    def _transition(self, batch_id: str, from_statuses: frozenset[BatchStatus], to: BatchStatus, at: int,
                    changes: dict[str, object]) -> BatchRecord | None:
        with _immediate(self._connection):
            rows = self._connection.execute("SELECT record FROM batches WHERE id = ?", (batch_id,)).fetchall()
            if not rows:
                return None
            record = _batch(rows[0][0])
            if record.status not in from_statuses:
                return None
            record = dataclasses.replace(record, status=to, times={**record.times, f"{to}_at": at}, **changes)
            self._connection.execute("UPDATE batches SET status = ?, record = ? WHERE id = ?",
                                     (to, _batch_json(record), batch_id))
            return record

    def _record_result(self, batch_id: str, result: LineResult) -> tuple[bool, int, int]:
        with _immediate(self._connection):
            kept = self._connection.execute(
                "INSERT OR IGNORE INTO results (batch_id, custom_id, line_index, ok, line) VALUES (?, ?, ?, ?, ?)",
                (batch_id, result.custom_id, result.index, int(result.ok), result.line)).rowcount > 0
            if kept:
                self._connection.execute(COUNT_RESULT, (batch_id, int(result.ok), int(not result.ok)))
            counts = self._connection.execute("SELECT completed, failed FROM result_counts WHERE batch_id = ?",
                                              (batch_id,)).fetchall()
        completed, failed = counts[0] if counts else (0, 0)
        return kept, completed, failed

    def _claim(self, consumer: str, count: int, lease_seconds: float) -> list[WorkItem]:
        with _immediate(self._connection):
            now = time.time()
            rows = self._connection.execute(f"SELECT {QUEUE_COLUMNS} FROM queue WHERE lease_until <= ? "
                                            "ORDER BY position LIMIT ?", (now, count)).fetchall()
            if len(rows) < count:
                rows += self._connection.execute(f"SELECT {QUEUE_COLUMNS} FROM queue WHERE lease_until IS NULL "
                                                 "ORDER BY position LIMIT ?", (count - len(rows),)).fetchall()
            self._connection.executemany(
                "UPDATE queue SET consumer = ?, lease_until = ?, deliveries = deliveries + 1 WHERE position = ?",
                [(consumer, now + lease_seconds, row[0]) for row in rows])
        return [WorkItem(batch_id, index, custom_id, body, str(position), deliveries + 1)
                for position, batch_id, index, custom_id, body, deliveries in rows]


@contextmanager
def _immediate(connection: sqlite3.Connection) -> Iterator[None]:
    """A `BEGIN IMMEDIATE` transaction: the write lock is taken at the start (waiting up to the
    busy timeout for another process), so what is read inside it no other writer changes before
    the commit. Committed on leaving, rolled back on an exception."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _open(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level None: transactions are only those begun explicitly (_immediate).
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                                     check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.executescript(SCHEMA)
        return connection
    except (OSError, sqlite3.Error) as exc:
        raise BatchStoreUnavailable(f"batch store {path} could not be opened: {exc}") from None


def _file_values(record: FileRecord) -> tuple:
    return (record.id, record.tenant, record.purpose, record.filename, record.bytes, record.created_at,
            record.expires_at)


def _batch_json(record: BatchRecord) -> str:
    return json.dumps(batch_to_dict(record))


def _batch(text: str) -> BatchRecord:
    return batch_from_dict(json.loads(text))
