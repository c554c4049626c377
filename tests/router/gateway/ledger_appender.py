"""Appends usage records forever with 16 concurrent appenders, printing each request_id once its
append returned; test_ledger.py kills it with SIGKILL and looks for every printed id.

    python -m tests.router.gateway.ledger_appender PATH [REDIS_URL PREFIX]"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from router.gateway.ledger import UsageLedger, UsageRecord, open_ledger
from router.gateway.redis_store import RedisStore

CONCURRENCY = 16


async def append_forever(ledger: UsageLedger) -> None:
    while True:
        record = UsageRecord(uuid.uuid4().hex, "acme", "small", "chat.completions", 10, 5, "ok", time.time())
        await ledger.append(record)
        sys.stdout.write(record.request_id + "\n")
        sys.stdout.flush()


async def main(path: str, redis_url: str | None, prefix: str | None) -> None:
    store = RedisStore(redis_url, timeout_seconds=2, prefix=prefix) if redis_url else None
    ledger = open_ledger(path, store)
    await asyncio.gather(*(append_forever(ledger) for _ in range(CONCURRENCY)))


if __name__ == "__main__":
    arguments = sys.argv[1:] + [None, None]
    asyncio.run(main(arguments[0], arguments[1], arguments[2]))
