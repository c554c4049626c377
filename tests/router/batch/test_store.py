"""The batch store's contract (router/batch/store.py), run on every store: files, batches and their
transitions, results kept once per custom_id, and the queue's claims, leases and acks."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from router.batch.store import (
    BatchRecord,
    BatchStatus,
    BatchStore,
    FileRecord,
    LineResult,
)
from tests.router.batch.conftest import StoreLocation
from tests.router.batch.queue_worker import opened_store

# Every consumer claims with the same lease, as the router's workers do: on Redis a lease runs
# out when a line has been idle for the lease of the claim that asks.
LEASE_SECONDS = 0.5
# Long enough for a lease of LEASE_SECONDS to have run out, on a busy machine too.
PAST_LEASE_SECONDS = LEASE_SECONDS + 0.3


def file_record(file_id: str, created_at: int = 100, tenant: str = "acme", purpose: str = "batch") -> FileRecord:
    return FileRecord(file_id, tenant, purpose, f"{file_id}.jsonl", 11, created_at)


def batch_record(batch_id: str, created_at: int = 100, tenant: str = "acme",
                 status: BatchStatus = BatchStatus.IN_PROGRESS, total: int = 0) -> BatchRecord:
    return BatchRecord(batch_id, tenant, "/v1/chat/completions", "file-in", "24h", status, created_at,
                       created_at + 86400, total, metadata={"team": "search"}, times={"in_progress_at": created_at})


def lines(count: int, prefix: str = "request") -> list[tuple[str, bytes]]:
    return [(f"{prefix}-{index}", b'{"body": %d}' % index) for index in range(count)]


async def add_batch_of(store: BatchStore, batch_id: str, count: int) -> None:
    await store.add_batch(batch_record(batch_id, total=count), lines(count))


# Files ----------------------------------------------------------------------------------


async def test_a_file_is_kept_with_its_content_and_replaced_by_the_same_id(batch_store):
    await batch_store.add_file(file_record("file-1"), b"first\n")
    assert await batch_store.file("file-1") == file_record("file-1")
    assert await batch_store.file_content("file-1") == b"first\n"

    replacement = dataclasses.replace(file_record("file-1"), bytes=7, expires_at=500)
    await batch_store.add_file(replacement, b"second\n")
    assert await batch_store.file("file-1") == replacement
    assert await batch_store.file_content("file-1") == b"second\n"
    assert await batch_store.files("acme", None, None, 10, False) == [replacement]


async def test_an_unknown_file_is_none(batch_store):
    assert await batch_store.file("file-missing") is None
    assert await batch_store.file_content("file-missing") is None
    assert await batch_store.delete_file("file-missing") is False


async def test_files_are_listed_by_creation_then_id_after_a_file_and_by_purpose(batch_store):
    records = [file_record("file-b", 100), file_record("file-a", 100),
               file_record("file-c", 101, purpose="batch_output"),
               file_record("file-d", 102), file_record("file-other", 100, tenant="globex")]
    for record in records:
        await batch_store.add_file(record, b"x")

    def ids(found: list[FileRecord]) -> list[str]:
        return [record.id for record in found]

    assert ids(await batch_store.files("acme", None, None, 10, False)) == ["file-a", "file-b", "file-c", "file-d"]
    assert ids(await batch_store.files("acme", None, None, 10, True)) == ["file-d", "file-c", "file-b", "file-a"]
    assert ids(await batch_store.files("acme", None, None, 2, False)) == ["file-a", "file-b"]
    assert ids(await batch_store.files("acme", None, "file-b", 10, False)) == ["file-c", "file-d"]
    assert ids(await batch_store.files("acme", None, "file-c", 10, True)) == ["file-b", "file-a"]
    assert ids(await batch_store.files("acme", "batch", None, 10, False)) == ["file-a", "file-b", "file-d"]
    assert ids(await batch_store.files("acme", "batch", "file-b", 1, False)) == ["file-d"]
    assert ids(await batch_store.files("acme", "batch_output", None, 10, True)) == ["file-c"]
    assert ids(await batch_store.files("globex", None, None, 10, False)) == ["file-other"]
    assert await batch_store.files("initech", None, None, 10, False) == []


async def test_a_deleted_file_is_gone_from_everywhere(batch_store):
    await batch_store.add_file(file_record("file-1"), b"x")
    await batch_store.add_file(file_record("file-2", purpose="batch_output"), b"y")

    assert await batch_store.delete_file("file-1") is True
    assert await batch_store.delete_file("file-1") is False
    assert await batch_store.file("file-1") is None
    assert await batch_store.file_content("file-1") is None
    assert [record.id for record in await batch_store.files("acme", None, None, 10, False)] == ["file-2"]
    assert await batch_store.files("acme", "batch", None, 10, False) == []


# Batches --------------------------------------------------------------------------------


async def test_a_batch_is_kept_as_added(batch_store):
    record = dataclasses.replace(batch_record("batch-1", total=2), errors=[], ending=None, output_file_id=None)
    await batch_store.add_batch(record, lines(2))
    assert await batch_store.batch("batch-1") == record
    assert await batch_store.batch("batch-missing") is None


async def test_a_batch_that_failed_validation_is_kept_without_lines(batch_store):
    errors = [{"code": "invalid_json_line", "message": "line 1 is not JSON", "param": None, "line": 1}]
    record = dataclasses.replace(batch_record("batch-1", status=BatchStatus.FAILED), errors=errors,
                                 times={"failed_at": 100})
    await batch_store.add_batch(record, [])
    assert await batch_store.batch("batch-1") == record
    assert await batch_store.claim("worker-1", 10, LEASE_SECONDS) == []


async def test_batches_are_listed_newest_first_after_a_batch(batch_store):
    for record in [batch_record("batch-1", 100), batch_record("batch-3", 102), batch_record("batch-2a", 101),
                   batch_record("batch-2b", 101), batch_record("batch-other", 103, tenant="globex")]:
        await batch_store.add_batch(record, [])

    async def ids(after: str | None, limit: int = 10) -> list[str]:
        return [record.id for record in await batch_store.batches("acme", after, limit)]

    assert await ids(None) == ["batch-3", "batch-2b", "batch-2a", "batch-1"]
    assert await ids(None, limit=2) == ["batch-3", "batch-2b"]
    assert await ids("batch-2b") == ["batch-2a", "batch-1"]
    assert await ids("batch-1") == []
    assert [record.id for record in await batch_store.batches("globex", None, 10)] == ["batch-other"]


async def test_active_batches_are_those_in_progress_finalizing_or_cancelling(batch_store):
    for index, status in enumerate(BatchStatus):
        await batch_store.add_batch(batch_record(f"batch-{status}", 100 + index, status=status), [])
    await batch_store.add_batch(batch_record("batch-done", 200), [])
    await batch_store.transition("batch-done", frozenset({BatchStatus.IN_PROGRESS}), BatchStatus.COMPLETED, 300)

    active = await batch_store.active_batches()
    assert sorted(record.id for record in active) == ["batch-cancelling", "batch-finalizing", "batch-in_progress"]


async def test_a_transition_moves_a_batch_only_from_the_statuses_named(batch_store):
    await batch_store.add_batch(batch_record("batch-1"), [])

    refused = await batch_store.transition("batch-1", frozenset({BatchStatus.FINALIZING}), BatchStatus.COMPLETED, 200)
    assert refused is None
    assert (await batch_store.batch("batch-1")).status == BatchStatus.IN_PROGRESS

    moved = await batch_store.transition("batch-1", frozenset({BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING}),
                                         BatchStatus.FINALIZING, 200, ending=BatchStatus.COMPLETED,
                                         output_file_id="file-out")
    assert moved.status == BatchStatus.FINALIZING
    assert moved.times == {"in_progress_at": 100, "finalizing_at": 200}
    assert moved.ending == BatchStatus.COMPLETED
    assert moved.output_file_id == "file-out"
    assert moved.metadata == {"team": "search"}
    assert await batch_store.batch("batch-1") == moved

    done = await batch_store.transition("batch-1", frozenset({BatchStatus.FINALIZING}), BatchStatus.COMPLETED, 300,
                                        error_file_id="file-errors")
    assert done.times == {"in_progress_at": 100, "finalizing_at": 200, "completed_at": 300}
    assert (done.output_file_id, done.error_file_id) == ("file-out", "file-errors")
    assert await batch_store.batch("batch-1") == done


async def test_a_transition_of_an_unknown_batch_is_none(batch_store):
    assert await batch_store.transition("batch-missing", frozenset({BatchStatus.IN_PROGRESS}),
                                        BatchStatus.CANCELLING, 200) is None


async def test_a_transition_refuses_changes_that_are_not_record_fields(batch_store):
    await batch_store.add_batch(batch_record("batch-1"), [])
    with pytest.raises(ValueError, match="colour"):
        await batch_store.transition("batch-1", frozenset({BatchStatus.IN_PROGRESS}), BatchStatus.CANCELLING, 200,
                                     colour="blue")
    with pytest.raises(ValueError, match="status"):
        await batch_store.transition("batch-1", frozenset({BatchStatus.IN_PROGRESS}), BatchStatus.CANCELLING, 200,
                                     status=BatchStatus.COMPLETED)
    assert await batch_store.batch("batch-1") == batch_record("batch-1")


async def test_of_two_concurrent_transitions_exactly_one_wins(batch_store, store_location: StoreLocation):
    await batch_store.add_batch(batch_record("batch-1"), [])
    async with opened_store(*store_location.arguments()) as other_replica:
        outcomes = await asyncio.gather(
            batch_store.transition("batch-1", frozenset({BatchStatus.IN_PROGRESS}), BatchStatus.CANCELLING, 200),
            other_replica.transition("batch-1", frozenset({BatchStatus.IN_PROGRESS}), BatchStatus.FINALIZING, 200),
        )
    winners = [outcome for outcome in outcomes if outcome is not None]
    assert len(winners) == 1
    assert await batch_store.batch("batch-1") == winners[0]


# Results --------------------------------------------------------------------------------


async def test_the_first_result_of_a_custom_id_wins_and_is_counted_once(batch_store):
    await add_batch_of(batch_store, "batch-1", 3)
    assert await batch_store.counts("batch-1") == (0, 0)
    assert not await batch_store.has_result("batch-1", "request-0")

    first = LineResult(0, "request-0", True, b'{"first": 1}')
    assert await batch_store.record_result("batch-1", first) == (True, 1, 0)
    again = LineResult(0, "request-0", False, b'{"again": 1}')
    assert await batch_store.record_result("batch-1", again) == (False, 1, 0)
    failed = LineResult(1, "request-1", False, b'{"error": 1}')
    assert await batch_store.record_result("batch-1", failed) == (True, 1, 1)

    assert await batch_store.has_result("batch-1", "request-0")
    assert not await batch_store.has_result("batch-1", "request-2")
    assert not await batch_store.has_result("batch-2", "request-0")
    assert await batch_store.counts("batch-1") == (1, 1)
    assert await batch_store.counts("batch-2") == (0, 0)
    assert await batch_store.results("batch-1") == [first, failed]


async def test_results_come_in_line_order(batch_store):
    await add_batch_of(batch_store, "batch-1", 12)
    for index in [11, 3, 0, 7, 10, 1, 2, 9, 4, 8, 6, 5]:
        await batch_store.record_result("batch-1", LineResult(index, f"request-{index}", index % 2 == 0,
                                                              b"line %d" % index))
    results = await batch_store.results("batch-1")
    assert [result.index for result in results] == list(range(12))
    assert results[5] == LineResult(5, "request-5", False, b"line 5")
    assert await batch_store.results("batch-missing") == []


# The queue ------------------------------------------------------------------------------


async def test_lines_are_claimed_in_queue_order_and_at_most_count_at_a_time(batch_store):
    await add_batch_of(batch_store, "batch-1", 3)
    await batch_store.add_batch(batch_record("batch-2", 101, total=2), lines(2, prefix="second"))

    first = await batch_store.claim("worker-1", 2, 30)
    second = await batch_store.claim("worker-2", 10, 30)
    assert [(item.batch_id, item.index, item.custom_id) for item in first + second] == [
        ("batch-1", 0, "request-0"), ("batch-1", 1, "request-1"), ("batch-1", 2, "request-2"),
        ("batch-2", 0, "second-0"), ("batch-2", 1, "second-1")]
    assert first[1].body == b'{"body": 1}'
    assert {item.deliveries for item in first + second} == {1}
    assert len({item.receipt for item in first + second}) == 5
    assert await batch_store.claim("worker-3", 10, 30) == []


async def test_a_line_whose_lease_ran_out_is_claimed_again_first(batch_store):
    await add_batch_of(batch_store, "batch-1", 4)
    [lost] = await batch_store.claim("worker-1", 1, LEASE_SECONDS)
    assert await batch_store.claim("worker-2", 1, LEASE_SECONDS) != [lost]

    await asyncio.sleep(PAST_LEASE_SECONDS)
    reclaimed = await batch_store.claim("worker-3", 2, LEASE_SECONDS)
    assert [(item.custom_id, item.deliveries) for item in reclaimed] == [("request-0", 2), ("request-1", 2)]
    assert reclaimed[0].body == lost.body
    assert [item.custom_id for item in await batch_store.claim("worker-3", 10, LEASE_SECONDS)] == [
        "request-2", "request-3"]


async def test_a_renewed_lease_keeps_its_line_from_others(batch_store):
    await add_batch_of(batch_store, "batch-1", 1)
    held = await batch_store.claim("worker-1", 1, LEASE_SECONDS)
    for _ in range(3):
        await asyncio.sleep(LEASE_SECONDS / 2)
        await batch_store.renew("worker-1", held, LEASE_SECONDS)
        assert await batch_store.claim("worker-2", 1, LEASE_SECONDS) == []

    await asyncio.sleep(PAST_LEASE_SECONDS)
    [reclaimed] = await batch_store.claim("worker-2", 1, LEASE_SECONDS)
    assert (reclaimed.custom_id, reclaimed.deliveries) == ("request-0", 2)


async def test_a_lease_lost_to_another_consumer_is_not_renewed_by_the_first(batch_store):
    await add_batch_of(batch_store, "batch-1", 1)
    stale = await batch_store.claim("worker-1", 1, LEASE_SECONDS)
    await asyncio.sleep(PAST_LEASE_SECONDS)
    taken = await batch_store.claim("worker-2", 1, LEASE_SECONDS)
    assert [item.custom_id for item in taken] == ["request-0"]

    await asyncio.sleep(LEASE_SECONDS / 2)
    await batch_store.renew("worker-1", stale, LEASE_SECONDS)
    await asyncio.sleep(LEASE_SECONDS / 2 + 0.1)
    # worker-2 never renewed: its lease ran out, whatever worker-1 asked.
    [reclaimed] = await batch_store.claim("worker-3", 1, LEASE_SECONDS)
    assert (reclaimed.custom_id, reclaimed.deliveries) == ("request-0", 3)


async def test_an_acked_line_is_gone_for_good(batch_store):
    await add_batch_of(batch_store, "batch-1", 3)
    claimed = await batch_store.claim("worker-1", 2, LEASE_SECONDS)
    await batch_store.ack(claimed)
    await batch_store.ack([])
    await asyncio.sleep(PAST_LEASE_SECONDS)
    assert [item.custom_id for item in await batch_store.claim("worker-2", 10, LEASE_SECONDS)] == ["request-2"]
    await batch_store.renew("worker-1", claimed, LEASE_SECONDS)
    assert await batch_store.claim("worker-2", 10, LEASE_SECONDS) == []
