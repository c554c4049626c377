"""Works through a batch store's queue in a process of its own, for the tests that need a second
process on the same store (test_store_processes.py).

    python -m tests.router.batch.queue_worker drain CONSUMER LEASE START_AT SQLITE_PATH [REDIS_URL PREFIX]
        From wall-clock time START_AT, claims lines until the queue is empty, recording each one's
        result (its line: the consumer's name) and acking it; prints each claimed custom_id.
    python -m tests.router.batch.queue_worker hold CONSUMER LEASE COUNT SQLITE_PATH [REDIS_URL PREFIX]
        Claims COUNT lines, prints "custom_id receipt" for each and `claimed`, then waits to be killed."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from router.batch.setup import open_batch_store
from router.batch.store import BatchStore, LineResult
from router.gateway.redis_store import RedisStore

CLAIM_COUNT = 3
# Each line "takes" this long, so that both processes' claims interleave.
WORK_SECONDS = 0.002


@asynccontextmanager
async def opened_store(sqlite_path: str, redis_url: str | None = None,
                       redis_prefix: str | None = None) -> AsyncIterator[BatchStore]:
    """The store these arguments name (Redis when `redis_url` is given), closed after."""
    redis = RedisStore(redis_url, timeout_seconds=2, prefix=redis_prefix or "") if redis_url else None
    store = open_batch_store(sqlite_path, redis)
    try:
        yield store
    finally:
        await store.close()
        if redis is not None:
            await redis.close()


async def drain(store: BatchStore, consumer: str, lease_seconds: float) -> None:
    """Says `ready` once its store is open, starts when told (a line on stdin: both workers
    start together, however long each took to start), then claims until the queue is empty."""
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    while items := await store.claim(consumer, CLAIM_COUNT, lease_seconds):
        for item in items:
            print(item.custom_id, flush=True)
            await asyncio.sleep(WORK_SECONDS)
            await store.record_result(item.batch_id, LineResult(item.index, item.custom_id, True, consumer.encode()))
        await store.ack(items)


async def hold(store: BatchStore, consumer: str, lease_seconds: float, count: int) -> None:
    for item in await store.claim(consumer, count, lease_seconds):
        print(item.custom_id, item.receipt, flush=True)
    print("claimed", flush=True)
    await asyncio.Event().wait()


async def main(mode: str, consumer: str, lease: str, number: str, *location: str) -> None:
    """`number`: how many lines `hold` claims (unused by `drain`)."""
    async with opened_store(*location) as store:
        if mode == "drain":
            await drain(store, consumer, float(lease))
        elif mode == "hold":
            await hold(store, consumer, float(lease), int(number))
        else:
            raise SystemExit(f"unknown mode {mode!r}: drain or hold")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
