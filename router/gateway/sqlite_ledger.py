"""The embedded usage ledger: one SQLite file in WAL mode with synchronous=FULL, so an append that
returned survives kill -9 and power loss. The `usage` table is append-only (triggers refuse UPDATE
and DELETE) and its request_id is UNIQUE, so a record written twice counts once.

Appends never block the event loop: one writer thread owns the connection, and the appends that
arrive while it commits are written together in its next transaction, one fsync for all of them
(group commit). The same file serves RedisLedger as its spool: `forwarded` keeps how far the
spooled records have been replayed into Redis."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from router.gateway.group_commit import settle
from router.gateway.usage_record import LedgerUnavailable, UsageRecord, UsageTotal

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    position INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    timestamp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (timestamp);
CREATE INDEX IF NOT EXISTS usage_by_tenant ON usage (tenant, timestamp);
CREATE TRIGGER IF NOT EXISTS usage_is_append_only_update BEFORE UPDATE ON usage
    BEGIN SELECT RAISE(ABORT, 'the usage ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS usage_is_append_only_delete BEFORE DELETE ON usage
    BEGIN SELECT RAISE(ABORT, 'the usage ledger is append-only'); END;
CREATE TABLE IF NOT EXISTS forwarded (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
"""
COLUMNS = "request_id, tenant, model, endpoint, prompt_tokens, completion_tokens, outcome, timestamp"
INSERT_RECORD = f"INSERT OR IGNORE INTO usage ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
SET_FORWARDED = "INSERT OR REPLACE INTO forwarded (id, position) VALUES (1, ?)"
TOTALS = ("SELECT tenant, model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) FROM usage "
          "WHERE timestamp >= ? AND timestamp < ? {tenant} GROUP BY tenant, model ORDER BY tenant, model")
UNFORWARDED = (f"SELECT position, {COLUMNS} FROM usage "
               "WHERE position > (SELECT COALESCE(MAX(position), 0) FROM forwarded) ORDER BY position LIMIT ?")


@dataclass(frozen=True, slots=True)
class _Write:
    """One statement for the writer thread, and the future its caller awaits."""

    sql: str
    parameters: tuple
    done: asyncio.Future


class SQLiteLedger:
    """The usage ledger in one SQLite file (created with its folder if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        connection = _open(self.path)
        self._queue: list[_Write] = []
        self._wakeup = threading.Condition()
        self._closing = False
        self._writer = threading.Thread(target=self._write_until_closed, args=(connection,),
                                        name=f"usage-ledger-writer:{self.path.name}", daemon=True)
        self._writer.start()

    async def append(self, record: UsageRecord) -> None:
        await self._write(INSERT_RECORD, (record.request_id, record.tenant, record.model, record.endpoint,
                                          record.prompt_tokens, record.completion_tokens, record.outcome,
                                          record.timestamp))

    async def totals(self, tenant: str | None, start: float, end: float) -> list[UsageTotal]:
        sql = TOTALS.format(tenant="" if tenant is None else "AND tenant = ?")
        parameters = (start, end) if tenant is None else (start, end, tenant)
        rows = await asyncio.to_thread(self._read, sql, parameters)
        return [UsageTotal(*row) for row in rows]

    async def unforwarded(self, limit: int) -> list[tuple[int, UsageRecord]]:
        """The first `limit` records, in order and with their positions, that come after the
        position `mark_forwarded` last stored: those a spool has yet to replay."""
        rows = await asyncio.to_thread(self._read, UNFORWARDED, (limit,))
        return [(row[0], UsageRecord(*row[1:])) for row in rows]

    async def mark_forwarded(self, position: int) -> None:
        """Every record up to `position` has been replayed (durable on return)."""
        await self._write(SET_FORWARDED, (position,))

    async def close(self) -> None:
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        await asyncio.to_thread(self._writer.join)

    def _read(self, sql: str, parameters: tuple) -> list[tuple]:
        # A connection per read: WAL readers do not wait for the writer, nor it for them.
        try:
            connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                return connection.execute(sql, parameters).fetchall()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"usage ledger {self.path} could not be read: {exc}") from None

    async def _write(self, sql: str, parameters: tuple) -> None:
        done = asyncio.get_running_loop().create_future()
        with self._wakeup:
            if self._closing:
                raise LedgerUnavailable(f"usage ledger {self.path} is closed")
            self._queue.append(_Write(sql, parameters, done))
            self._wakeup.notify()
        # A caller cancelled meanwhile does not take its write back: it is queued, it is written.
        await done

    def _write_until_closed(self, connection: sqlite3.Connection) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._closing:
                    self._wakeup.wait()
                batch, self._queue = self._queue, []
            if not batch:
                connection.close()
                return
            _settle(batch, self._commit(connection, batch))

    def _commit(self, connection: sqlite3.Connection, batch: list[_Write]) -> LedgerUnavailable | None:
        try:
            connection.execute("BEGIN IMMEDIATE")
            for write in batch:
                connection.execute(write.sql, write.parameters)
            connection.execute("COMMIT")
            return None
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            logger.error("usage ledger %s could not write %d records: %s", self.path, len(batch), exc)
            return LedgerUnavailable(f"usage ledger {self.path} could not be written: {exc}")


def _open(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.executescript(SCHEMA)
        return connection
    except (OSError, sqlite3.Error) as exc:
        raise LedgerUnavailable(f"usage ledger {path} could not be opened: {exc}") from None


def _settle(batch: list[_Write], error: LedgerUnavailable | None) -> None:
    """Wakes every writer of `batch` on its own event loop, one hop per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = defaultdict(list)
    for write in batch:
        by_loop[write.done.get_loop()].append(write.done)
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(settle, futures, error)
        except RuntimeError:
            pass  # that loop has closed: nobody waits any more

