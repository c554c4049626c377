"""How batches end, on each store: the sweeper finishes a batch whose replica died mid-finalize
(writing the same files again, under the same ids), completes one whose last result's replica
died before finalizing, and expires one past its window with an error line for each line that
never ran, all in input line order; and it counts the backlog of lines still without a result."""

from __future__ import annotations

import json

from router.batch.finalize import Finalizer, Sweeper
from router.batch.metrics import BATCH_LINES_PENDING
from router.batch.objects import answered_line, produced_file_id
from router.batch.store import BatchRecord, BatchStatus, FileRecord, LineResult

CREATED = 1_000_000
WINDOW = 3600
STALE_SECONDS = 60


def clock_at(now: float):
    return lambda: now


async def started_batch(store, batch_id: str, custom_ids: list[str]) -> BatchRecord:
    content = b"".join(json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
                                   "body": {"model": "auto", "prompt": custom_id}}).encode() + b"\n"
                       for custom_id in custom_ids)
    await store.add_file(FileRecord(f"file-{batch_id}", "acme", "batch", "in.jsonl", len(content), CREATED), content)
    record = BatchRecord(batch_id, "acme", "/v1/completions", f"file-{batch_id}", "1h", BatchStatus.IN_PROGRESS,
                         CREATED, CREATED + WINDOW, len(custom_ids), times={"in_progress_at": CREATED})
    await store.add_batch(record, [(custom_id, b"{}") for custom_id in custom_ids])
    return record


async def answer(store, batch_id: str, index: int, custom_id: str, status: int = 200) -> None:
    line = answered_line(batch_id, custom_id, status, f"request-{index}", {"n": index})
    await store.record_result(batch_id, LineResult(index, custom_id, status == 200, line))


async def lines_of(store, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in (await store.file_content(file_id)).splitlines()]


async def test_a_batch_left_finalizing_is_finished_again_with_the_same_files(batch_store):
    await started_batch(batch_store, "batch_dead", ["a", "b", "c"])
    for index, custom_id in enumerate(["a", "b", "c"]):
        await answer(batch_store, "batch_dead", index, custom_id, status=400 if custom_id == "b" else 200)
    # A replica moved it to finalizing and died before writing its files.
    await batch_store.transition("batch_dead", frozenset({BatchStatus.IN_PROGRESS}), BatchStatus.FINALIZING,
                                 CREATED + 10, ending=BatchStatus.COMPLETED)

    finalizer = Finalizer(batch_store, clock_at(CREATED + 20))
    await Sweeper(batch_store, finalizer, STALE_SECONDS, clock_at(CREATED + 20)).sweep()
    assert (await batch_store.batch("batch_dead")).status is BatchStatus.FINALIZING  # not stale yet

    later = CREATED + 10 + STALE_SECONDS
    await Sweeper(batch_store, Finalizer(batch_store, clock_at(later)), STALE_SECONDS, clock_at(later)).sweep()
    batch = await batch_store.batch("batch_dead")
    assert batch.status is BatchStatus.COMPLETED and batch.times["completed_at"] == later
    assert batch.output_file_id == produced_file_id("batch_dead", "output")
    assert batch.error_file_id == produced_file_id("batch_dead", "error")
    assert [line["custom_id"] for line in await lines_of(batch_store, batch.output_file_id)] == ["a", "c"]
    [error] = await lines_of(batch_store, batch.error_file_id)
    assert error["custom_id"] == "b" and error["response"]["status_code"] == 400
    output = await batch_store.file_content(batch.output_file_id)

    # Finishing once more (another replica that thought it stale too) writes the same file.
    await Finalizer(batch_store, clock_at(later)).finish(await batch_store.batch("batch_dead"))
    assert await batch_store.file_content(batch.output_file_id) == output


async def test_a_batch_with_every_result_is_completed_by_the_sweeper(batch_store):
    await started_batch(batch_store, "batch_done", ["x", "y"])
    await answer(batch_store, "batch_done", 1, "y")
    await answer(batch_store, "batch_done", 0, "x")
    now = CREATED + 5
    await Sweeper(batch_store, Finalizer(batch_store, clock_at(now)), STALE_SECONDS, clock_at(now)).sweep()
    batch = await batch_store.batch("batch_done")
    assert batch.status is BatchStatus.COMPLETED and batch.error_file_id is None
    assert [line["custom_id"] for line in await lines_of(batch_store, batch.output_file_id)] == ["x", "y"]


async def test_a_batch_past_its_window_expires_with_the_lines_it_ran(batch_store):
    await started_batch(batch_store, "batch_late", ["p", "q", "r"])
    await answer(batch_store, "batch_late", 1, "q")
    now = CREATED + WINDOW
    await Sweeper(batch_store, Finalizer(batch_store, clock_at(now)), STALE_SECONDS, clock_at(now)).sweep()
    batch = await batch_store.batch("batch_late")
    assert batch.status is BatchStatus.EXPIRED and batch.times["expired_at"] == now
    assert [line["custom_id"] for line in await lines_of(batch_store, batch.output_file_id)] == ["q"]
    errors = await lines_of(batch_store, batch.error_file_id)
    assert [(line["custom_id"], line["error"]["code"], line["response"]) for line in errors] == [
        ("p", "batch_expired", None), ("r", "batch_expired", None)]
    assert len({line["id"] for line in errors}) == 2


async def test_the_sweeper_counts_the_lines_without_a_result_of_the_batches_in_progress(batch_store):
    await started_batch(batch_store, "batch_half", ["a", "b", "c"])
    await answer(batch_store, "batch_half", 0, "a")
    await started_batch(batch_store, "batch_full", ["x"])
    await answer(batch_store, "batch_full", 0, "x")
    now = CREATED + 5
    await Sweeper(batch_store, Finalizer(batch_store, clock_at(now)), STALE_SECONDS, clock_at(now)).sweep()
    assert BATCH_LINES_PENDING._value.get() == 2
    assert (await batch_store.batch("batch_full")).status is BatchStatus.COMPLETED
