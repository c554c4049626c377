"""How a batch ends. Every change of status is a compare-and-set in the store, so that of the
replicas that try at once exactly one moves it: a batch whose lines all have a result goes
in_progress -> finalizing -> completed; one whose completion window passed, finalizing -> expired
with the results it has; a cancelled one, cancelling -> finalizing -> cancelled. Finalizing writes
the output and error files, in input line order, under ids derived from the batch's, so a replica
that finalizes again after another died mid-way writes the same files. The Sweeper, in every
replica, moves the batches that no line's result will move: expired, cancelled, and stuck in
finalizing."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable

from router.batch.failure_log import RepeatedFailureLog
from router.batch.metrics import BATCH_LINES_PENDING, BATCH_TRANSITIONS
from router.batch.objects import OUTPUT_PURPOSE, produced_file_id, unanswered_line
from router.batch.store import (
    FINAL_STATUSES,
    BatchKind,
    BatchRecord,
    BatchStatus,
    BatchStore,
    FileRecord,
    LineResult,
)
from router.batch.validation import request_lines

logger = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0
# Background requests past their retention are looked for this often, at most this many at a time.
RETENTION_SWEEP_SECONDS = 10.0
RETENTION_SWEEP_LIMIT = 1000
DEFAULT_BACKGROUND_RETENTION_SECONDS = 86400.0


class Finalizer:
    def __init__(self, store: BatchStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def transition(self, batch_id: str, from_statuses: frozenset[BatchStatus], to: BatchStatus,
                         **changes: object) -> BatchRecord | None:
        """The store's compare-and-set, counted in the metrics when it moved the batch."""
        record = await self.store.transition(batch_id, from_statuses, to, int(self.clock()), **changes)
        if record is not None:
            BATCH_TRANSITIONS.labels(str(to), str(record.kind)).inc()
            logger.info("batch %s: %s", batch_id, to)
        return record

    async def complete_if_done(self, batch_id: str) -> int:
        """Finalize a batch in progress whose lines all have a result; how many lines have none
        (0 for a batch not in progress)."""
        batch = await self.store.batch(batch_id)
        if batch is None or batch.status is not BatchStatus.IN_PROGRESS:
            return 0
        completed, failed = await self.store.counts(batch_id)
        if completed + failed >= batch.total:
            await self.end(batch, BatchStatus.COMPLETED)
        return max(batch.total - completed - failed, 0)

    async def end(self, batch: BatchRecord, ending: BatchStatus) -> None:
        """in_progress or cancelling -> finalizing (unless another replica got there first) ->
        `ending`, with its files."""
        record = await self.transition(batch.id, frozenset({BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING}),
                                       BatchStatus.FINALIZING, ending=ending)
        if record is not None:
            await self.finish(record)

    async def finish(self, batch: BatchRecord) -> None:
        """Write a finalizing batch's files and move it to its ending."""
        ending = batch.ending or BatchStatus.COMPLETED
        # A background request's result is its one LineResult, read by id: it has no files.
        output_file_id, error_file_id = (None, None) if batch.kind is BatchKind.BACKGROUND else \
            await self._write_files(batch, ending)
        await self.transition(batch.id, frozenset({BatchStatus.FINALIZING}), ending,
                              output_file_id=output_file_id, error_file_id=error_file_id)

    async def _write_files(self, batch: BatchRecord, ending: BatchStatus) -> tuple[str | None, str | None]:
        """The output file (2xx answers) and the error file (other answers, and the lines that never
        ran), each None when it would be empty, as OpenAI's are."""
        content = await self.store.file_content(batch.input_file_id) or b""
        results = await self.store.results(batch.id)
        output, errors = await asyncio.to_thread(produced_lines, batch, ending, content, results)
        return (await self._add_file(batch, "output", output), await self._add_file(batch, "error", errors))

    async def _add_file(self, batch: BatchRecord, kind: str, lines: list[bytes]) -> str | None:
        if not lines:
            return None
        content = b"".join(line + b"\n" for line in lines)
        record = FileRecord(produced_file_id(batch.id, kind), batch.tenant, OUTPUT_PURPOSE,
                            f"{batch.id}_{kind}.jsonl", len(content), int(self.clock()))
        await self.store.add_file(record, content)
        return record.id


def produced_lines(batch: BatchRecord, ending: BatchStatus, content: bytes,
                   results: list[LineResult]) -> tuple[list[bytes], list[bytes]]:
    """(output lines, error lines) in input line order: each line's result, or, for a line that
    has none, the error that says its batch ended first."""
    by_index = {result.index: result for result in results}
    output: list[bytes] = []
    errors: list[bytes] = []
    for index, (_, text) in enumerate(request_lines(content)):
        result = by_index.pop(index, None)
        if result is not None:
            (output if result.ok else errors).append(result.line)
        else:
            errors.append(unanswered_line(batch.id, json.loads(text)["custom_id"], ending))
    # Results whose input line cannot be read (never expected: the input file cannot be deleted
    # while its batch is active) are kept rather than lost.
    for result in sorted(by_index.values(), key=lambda result: result.index):
        (output if result.ok else errors).append(result.line)
    return output, errors


class Sweeper:
    """Every SWEEP_SECONDS, in every replica: expire batches past their window, end cancelled ones,
    finalize batches whose last result's replica died before finalizing, and finish those left
    in finalizing for `stale_seconds` (their replica died mid-way)."""

    def __init__(self, store: BatchStore, finalizer: Finalizer, stale_seconds: float,
                 clock: Callable[[], float] = time.time,
                 background_retention_seconds: float = DEFAULT_BACKGROUND_RETENTION_SECONDS) -> None:
        self.store = store
        self.finalizer = finalizer
        self.stale_seconds = stale_seconds
        self.background_retention_seconds = background_retention_seconds
        self.clock = clock
        self._next_retention_sweep = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batch-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        failures = RepeatedFailureLog(logger, "the batch sweeper", SWEEP_SECONDS)
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.succeeded()
            await asyncio.sleep(SWEEP_SECONDS)

    async def sweep(self) -> None:
        """One pass over the active batches; router_batch_lines_pending set from the lines of
        those in progress."""
        now = self.clock()
        pending = 0
        for batch in await self.store.active_batches():
            if batch.status is BatchStatus.IN_PROGRESS and now >= batch.expires_at:
                await self.finalizer.end(batch, BatchStatus.EXPIRED)
            elif batch.status is BatchStatus.IN_PROGRESS:
                pending += await self.finalizer.complete_if_done(batch.id)
            elif batch.status is BatchStatus.CANCELLING:
                await self.finalizer.end(batch, BatchStatus.CANCELLED)
            elif batch.status is BatchStatus.FINALIZING and \
                    now - batch.times.get("finalizing_at", 0) >= self.stale_seconds:
                await self.finalizer.finish(batch)
        BATCH_LINES_PENDING.set(pending)
        if now >= self._next_retention_sweep:
            self._next_retention_sweep = now + RETENTION_SWEEP_SECONDS
            await self.delete_retained(now)

    async def delete_retained(self, now: float) -> int:
        """Delete the background requests that ended `background_retention_seconds` ago or more
        (only one that ended can be: a request created more recently than that cannot have); how
        many were deleted."""
        cutoff = now - self.background_retention_seconds
        deleted = 0
        for record in await self.store.background_requests(math.ceil(cutoff), RETENTION_SWEEP_LIMIT):
            ended_at = record.times.get(f"{record.status}_at")
            if record.status in FINAL_STATUSES and ended_at is not None and ended_at <= cutoff:
                await self.store.delete_batch(record.id)
                deleted += 1
        if deleted:
            logger.info("deleted %d background requests past their retention (%g s)", deleted,
                        self.background_retention_seconds)
        return deleted
