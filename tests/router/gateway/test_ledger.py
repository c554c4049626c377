"""The usage ledger: totals per tenant, model and period, each request counted once, nothing an
append acknowledged lost to kill -9; with Redis, every replica's usage seen by all, and records
spooled while Redis is away replayed once it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from router.gateway.ledger import (
    LedgerUnavailable,
    RedisLedger,
    SQLiteLedger,
    UsageRecord,
    UsageTotal,
    open_ledger,
)
from router.gateway.redis_store import RedisStore
from tests.redis_server import start_redis

REPOSITORY = Path(__file__).resolve().parents[3]
HOUR = 3600.0
ON_THE_HOUR = 1_765_000_800.0  # 2025-12-06 06:00 UTC


def record(request_id: str, tenant: str = "acme", model: str = "small", prompt: int = 10, completion: int = 5,
           timestamp: float = ON_THE_HOUR, outcome: str = "ok") -> UsageRecord:
    return UsageRecord(request_id, tenant, model, "chat.completions", prompt, completion, outcome, timestamp)


SAMPLE = [
    record("a1", timestamp=ON_THE_HOUR + 10),
    record("a2", completion=7, timestamp=ON_THE_HOUR + HOUR + 59),
    record("a3", model="large", prompt=100, completion=50, timestamp=ON_THE_HOUR + 2 * HOUR + 1),
    record("b1", tenant="globex", prompt=3, completion=1, timestamp=ON_THE_HOUR + 30),
    record("late", timestamp=ON_THE_HOUR - 1),  # before every period asked for below
]


async def totals_of_sample(ledger) -> dict[str, list[UsageTotal]]:
    await asyncio.gather(*(ledger.append(each) for each in SAMPLE))
    return {
        "acme, three hours": await ledger.totals("acme", ON_THE_HOUR, ON_THE_HOUR + 3 * HOUR),
        "everyone, three hours": await ledger.totals(None, ON_THE_HOUR, ON_THE_HOUR + 3 * HOUR),
        "acme, first second to 2h": await ledger.totals("acme", ON_THE_HOUR + 10, ON_THE_HOUR + 2 * HOUR),
        "acme, within the first hour": await ledger.totals("acme", ON_THE_HOUR + 11, ON_THE_HOUR + HOUR + 60),
        "nobody": await ledger.totals("initech", ON_THE_HOUR, ON_THE_HOUR + 3 * HOUR),
    }


EXPECTED_SAMPLE_TOTALS = {
    "acme, three hours": [UsageTotal("acme", "large", 1, 100, 50), UsageTotal("acme", "small", 2, 20, 12)],
    "everyone, three hours": [UsageTotal("acme", "large", 1, 100, 50), UsageTotal("acme", "small", 2, 20, 12),
                              UsageTotal("globex", "small", 1, 3, 1)],
    "acme, first second to 2h": [UsageTotal("acme", "small", 2, 20, 12)],
    "acme, within the first hour": [UsageTotal("acme", "small", 1, 10, 7)],
    "nobody": [],
}


def test_sqlite_totals_per_tenant_model_and_period(tmp_path):
    async def scenario():
        ledger = SQLiteLedger(tmp_path / "usage.db")
        try:
            return await totals_of_sample(ledger)
        finally:
            await ledger.close()

    assert asyncio.run(scenario()) == EXPECTED_SAMPLE_TOTALS


def test_a_record_written_twice_counts_once_and_survives_reopening(tmp_path):
    async def scenario():
        ledger = SQLiteLedger(tmp_path / "usage.db")
        await ledger.append(record("same"))
        await ledger.append(record("same", prompt=999))
        await ledger.close()
        reopened = SQLiteLedger(tmp_path / "usage.db")
        try:
            return await reopened.totals(None, 0, ON_THE_HOUR + HOUR)
        finally:
            await reopened.close()

    assert asyncio.run(scenario()) == [UsageTotal("acme", "small", 1, 10, 5)]


def test_the_ledger_file_is_append_only(tmp_path):
    async def scenario():
        ledger = SQLiteLedger(tmp_path / "usage.db")
        await ledger.append(record("kept"))
        await ledger.close()

    asyncio.run(scenario())
    connection = sqlite3.connect(tmp_path / "usage.db")
    for change in ("UPDATE usage SET prompt_tokens = 0", "DELETE FROM usage"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            connection.execute(change)
    assert connection.execute("SELECT COUNT(*) FROM usage").fetchone() == (1,)


def test_concurrent_appends_are_all_counted(tmp_path):
    appenders, each = 64, 20

    async def append_many(ledger, appender: int) -> None:
        for number in range(each):
            await ledger.append(record(f"{appender}-{number}", prompt=appender, completion=1))

    async def scenario():
        ledger = SQLiteLedger(tmp_path / "usage.db")
        try:
            await asyncio.gather(*(append_many(ledger, appender) for appender in range(appenders)))
            return await ledger.totals("acme", 0, ON_THE_HOUR + 1)
        finally:
            await ledger.close()

    assert asyncio.run(scenario()) == [UsageTotal("acme", "small", appenders * each,
                                                  each * sum(range(appenders)), appenders * each)]


def test_appending_to_a_closed_ledger_says_so(tmp_path):
    async def scenario():
        ledger = SQLiteLedger(tmp_path / "usage.db")
        await ledger.close()
        await ledger.append(record("too-late"))

    with pytest.raises(LedgerUnavailable, match="closed"):
        asyncio.run(scenario())


def test_a_ledger_that_cannot_be_opened_says_which_file(tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    with pytest.raises(LedgerUnavailable, match="usage ledger .*not-a-folder/usage.db could not be opened"):
        SQLiteLedger(tmp_path / "not-a-folder" / "usage.db")


def appended_until_killed(*arguments: str, lines: int = 300) -> list[str]:
    """The request_ids the appender printed (each after its append returned) before SIGKILL."""
    process = subprocess.Popen([sys.executable, "-m", "tests.router.gateway.ledger_appender", *arguments],
                               cwd=REPOSITORY, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    try:
        printed = [process.stdout.readline().decode().strip() for _ in range(lines)]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert all(printed), "the appender stopped early"
    return printed


def test_kill_9_loses_no_acknowledged_record(tmp_path):
    printed = appended_until_killed(str(tmp_path / "usage.db"))
    stored = {row[0] for row in sqlite3.connect(tmp_path / "usage.db").execute("SELECT request_id FROM usage")}
    assert set(printed) <= stored


def test_kill_9_loses_no_record_redis_acknowledged(tmp_path, redis_server, redis_prefix):
    printed = appended_until_killed(str(tmp_path / "spool.db"), redis_server.url, redis_prefix)
    entries = redis.Redis(port=redis_server.port).xrange(redis_prefix + "usage")
    stored = {UsageRecord.from_json(fields[b"record"]).request_id for _, fields in entries}
    assert set(printed) <= stored


def test_redis_totals_per_tenant_model_and_period(tmp_path, redis_server, redis_prefix):
    async def scenario():
        store = RedisStore(redis_server.url, prefix=redis_prefix)
        ledger = RedisLedger(store, SQLiteLedger(tmp_path / "spool.db"))
        try:
            return await totals_of_sample(ledger)
        finally:
            await ledger.close()
            await store.close()

    # The sample's timestamps are a year old: Redis counts them as late records, by timestamp.
    assert asyncio.run(scenario()) == EXPECTED_SAMPLE_TOTALS


def test_every_replica_sees_every_replicas_usage_counted_once(tmp_path, redis_server, redis_prefix):
    now = time.time()

    async def scenario():
        stores = [RedisStore(redis_server.url, prefix=redis_prefix) for _ in range(2)]
        replicas = [open_ledger(tmp_path / f"spool-{number}.db", store) for number, store in enumerate(stores)]
        try:
            await replicas[0].append(record("one", timestamp=now))
            await replicas[1].append(record("two", model="large", timestamp=now))
            await replicas[1].append(record("one", timestamp=now))  # a retried record
            await replicas[0].append(record("three", tenant="globex", timestamp=now))
            return [await replica.totals("acme", now - 2 * HOUR, now + 1) for replica in replicas]
        finally:
            for replica in replicas:
                await replica.close()
            for store in stores:
                await store.close()

    seen = [UsageTotal("acme", "large", 1, 10, 5), UsageTotal("acme", "small", 1, 10, 5)]
    assert asyncio.run(scenario()) == [seen, seen]


def test_redis_away_spools_then_replays_once_it_is_back(tmp_path):
    server = start_redis(tmp_path / "redis")
    server.stop()
    now = time.time()

    async def scenario():
        store = RedisStore(server.url, timeout_seconds=0.2, prefix="spool-test:")
        ledger = open_ledger(tmp_path / "spool.db", store)
        try:
            started = time.monotonic()
            for number in range(20):
                await ledger.append(record(f"away-{number}", timestamp=now))
            spooling_seconds = time.monotonic() - started
            with pytest.raises(LedgerUnavailable, match="Redis"):
                await ledger.totals(None, 0, now + 1)
            server.restart()
            await ledger.append(record("back", timestamp=now))
            await ledger.append(record("away-0", timestamp=now))  # replayed already or soon: once
            return spooling_seconds, await totals_when(ledger, now, requests=21)
        finally:
            await ledger.close()
            await store.close()

    try:
        spooling_seconds, totals = asyncio.run(scenario())
    finally:
        server.stop()
    assert spooling_seconds < 1.5  # one timeout, then straight to the spool
    assert totals == [UsageTotal("acme", "small", 21, 210, 105)]


def test_a_redis_that_forgot_the_append_script_loses_nothing(tmp_path, redis_server, redis_prefix):
    now = time.time()

    async def scenario():
        store = RedisStore(redis_server.url, prefix=redis_prefix)
        ledger = open_ledger(tmp_path / "spool.db", store)
        try:
            await ledger.append(record("before", timestamp=now))
            await store.call("test", store.client.script_flush())
            await ledger.append(record("after", timestamp=now))
            return await totals_when(ledger, now, requests=2)
        finally:
            await ledger.close()
            await store.close()

    assert asyncio.run(scenario()) == [UsageTotal("acme", "small", 2, 20, 10)]


def test_spooled_records_of_an_earlier_run_are_replayed(tmp_path, redis_server, redis_prefix):
    now = time.time()

    async def scenario():
        spool = SQLiteLedger(tmp_path / "spool.db")
        for number in range(3):
            await spool.append(record(f"earlier-{number}", timestamp=now))
        await spool.close()
        store = RedisStore(redis_server.url, prefix=redis_prefix)
        ledger = open_ledger(tmp_path / "spool.db", store)
        try:
            return await totals_when(ledger, now, requests=3)
        finally:
            await ledger.close()
            await store.close()

    assert asyncio.run(scenario()) == [UsageTotal("acme", "small", 3, 30, 15)]


async def totals_when(ledger, now: float, requests: int) -> list[UsageTotal]:
    """The totals up to `now` once they count `requests` (the replay runs in the background), or
    after 5 seconds whatever they are."""
    deadline = time.monotonic() + 5
    while True:
        totals = await ledger.totals(None, now - HOUR, now + 1)
        if sum(total.requests for total in totals) >= requests or time.monotonic() > deadline:
            return totals
        await asyncio.sleep(0.05)
