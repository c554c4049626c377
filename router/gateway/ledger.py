"""The gateway's durable, append-only usage ledger: an embedded SQLite file for one replica
(router/gateway/sqlite_ledger.py), or a Redis Stream that replicas share, spooled to that file
while Redis is away (router/gateway/redis_ledger.py). The gateway uses it through this module."""

from __future__ import annotations

from pathlib import Path

from router.gateway.redis_ledger import RedisLedger
from router.gateway.redis_store import RedisStore
from router.gateway.sqlite_ledger import SQLiteLedger
from router.gateway.usage_record import (
    LedgerUnavailable,
    UsageLedger,
    UsageRecord,
    UsageTotal,
)

__all__ = ["LedgerUnavailable", "RedisLedger", "SQLiteLedger", "UsageLedger", "UsageRecord", "UsageTotal",
           "open_ledger"]


def open_ledger(path: str | Path, store: RedisStore | None) -> UsageLedger:
    """The ledger in the SQLite file at `path`, or, with a Redis `store`, the shared one that
    spools to that file."""
    spool_or_ledger = SQLiteLedger(path)
    return spool_or_ledger if store is None else RedisLedger(store, spool_or_ledger)
