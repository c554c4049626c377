"""The batch worker of one router process: it claims lines from the store's queue while there is
spare capacity (router/batch/capacity.py), runs each through the router's own app in process
(router/batch/dispatch.py), keeps its result (the first one kept wins) and acks it, and finalizes
the batch when its last line has a result. A line's lease is renewed while it runs; if this
process dies, the lease runs out and another worker (or this one, restarted) claims the line
again. A 429 or 503 is not a result: the line waits for its Retry-After and runs again. When
online requests come and the capacity's limit drops below the lines being sent, the newest are
preempted (their requests cancelled, which aborts them in the engine) and sent again, still
leased to this process, once the limit allows: a line that has run a second costs less than
every online first token meanwhile waiting behind a full batch. A background request is a batch
of one line, run the same way; its dispatch can be cancelled."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus

from router.batch.capacity import SpareCapacity
from router.batch.dispatch import (
    DispatchedAnswer,
    InProcessDispatcher,
    at_batch_priority,
)
from router.batch.failure_log import RepeatedFailureLog
from router.batch.finalize import Finalizer
from router.batch.metrics import BATCH_LINES, BATCH_LINES_IN_FLIGHT
from router.batch.objects import answered_line
from router.batch.store import (
    BatchKind,
    BatchRecord,
    BatchStatus,
    BatchStore,
    LineResult,
    WorkItem,
)

logger = logging.getLogger(__name__)

# How long the worker waits before looking again when the queue is empty or capacity is short.
IDLE_SECONDS = 0.2
# Statuses not answered as results: the line runs again after the answer's Retry-After.
RETRIED_STATUSES = frozenset({HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE})
DEFAULT_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    lease_seconds: float


class BatchWorker:
    def __init__(self, store: BatchStore, dispatcher: InProcessDispatcher, finalizer: Finalizer,
                 capacity: SpareCapacity, settings: WorkerSettings) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.finalizer = finalizer
        self.capacity = capacity
        self.settings = settings
        # Unique per process: a restarted router is another consumer, and claims its own lines
        # again only once their leases have run out.
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lines: set[asyncio.Task] = set()
        # The lines' requests being sent now, oldest first: the newest are preempted first.
        self._sending: list[asyncio.Task] = []
        self._task: asyncio.Task | None = None
        self._slot_freed = asyncio.Event()
        # The dispatches of background requests running here, by id, for cancel_dispatch.
        self._dispatches: dict[str, asyncio.Task] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batch-worker")

    async def stop(self) -> None:
        """Stop claiming and drop the lines running: their leases run out, and they run again."""
        tasks = [task for task in (self._task, *self._lines) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        failures = RepeatedFailureLog(logger, "claiming batch lines", IDLE_SECONDS)
        while True:
            self._preempt()
            try:
                claimed = await self._claim()
            except Exception as exc:
                claimed = 0
                failures.failed(exc)
            else:
                failures.succeeded()
            if not claimed:
                await self._idle()

    async def _claim(self) -> int:
        free = self.capacity.free_slots(len(self._lines))
        if free == 0:
            return 0
        items = await self.store.claim(self.consumer, free, self.settings.lease_seconds)
        for item in items:
            task = asyncio.create_task(self._line(item), name=f"batch-line-{item.batch_id}-{item.index}")
            self._lines.add(task)
            task.add_done_callback(self._line_done)
        return len(items)

    def _preempt(self) -> None:
        """Cancel the newest requests past the capacity's limit (online requests came)."""
        for sending in self._sending[self.capacity.limit():]:
            sending.cancel()

    async def _idle(self) -> None:
        """Until a slot is freed or IDLE_SECONDS pass (new lines, or capacity, may have come)."""
        self._slot_freed.clear()
        try:
            await asyncio.wait_for(self._slot_freed.wait(), IDLE_SECONDS)
        except TimeoutError:
            pass

    def _line_done(self, task: asyncio.Task) -> None:
        self._lines.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("a batch line failed; its lease runs out and it runs again", exc_info=task.exception())

    async def _line(self, item: WorkItem) -> None:
        BATCH_LINES_IN_FLIGHT.inc()
        renewing = asyncio.create_task(self._renew(item))
        try:
            await self._run_line(item)
        finally:
            renewing.cancel()
            BATCH_LINES_IN_FLIGHT.dec()

    async def _run_line(self, item: WorkItem) -> None:
        batch = await self.store.batch(item.batch_id)
        if not _runs(batch) or await self.store.has_result(item.batch_id, item.custom_id):
            # Its batch ended (or is being cancelled: lines not started are not run), or this is
            # a redelivery of a line whose result was kept before its ack was.
            BATCH_LINES.labels("skipped").inc()
            await self.store.ack([item])
            return
        if batch.kind is BatchKind.BACKGROUND:
            # Its object says in_progress from now on; None: it was cancelled or expired meanwhile.
            batch = await self.store.transition(batch.id, frozenset({BatchStatus.IN_PROGRESS}),
                                                BatchStatus.IN_PROGRESS, int(time.time()))
        answer = await self._cancellable_answer(batch, item) if batch is not None else None
        if answer is None:
            BATCH_LINES.labels("skipped").inc()
            await self.store.ack([item])
            return
        if not _records(await self.store.batch(batch.id)):
            # Its batch expired, or its cancellation is finalizing, while the line ran: the files
            # being written would not hold this result, and the counts must match them.
            BATCH_LINES.labels("skipped").inc()
            await self.store.ack([item])
            return
        kept, completed, failed = await self.store.record_result(batch.id, _result(batch, item, answer))
        await self.store.ack([item])
        BATCH_LINES.labels(("completed" if _ok(answer) else "failed") if kept else "skipped").inc()
        if completed + failed >= batch.total:
            await self.finalizer.complete_if_done(batch.id)

    def cancel_dispatch(self, batch_id: str) -> bool:
        """Stop the dispatch of a background request running in this process (it was cancelled):
        its target's request is closed rather than run to its end. False when it is not here."""
        dispatch = self._dispatches.get(batch_id)
        if dispatch is None:
            return False
        dispatch.cancel()
        return True

    async def _cancellable_answer(self, batch: BatchRecord, item: WorkItem) -> DispatchedAnswer | None:
        """The line's answer, or None when cancel_dispatch stopped it (the worker stopping still
        cancels the line, whose lease then runs out)."""
        if batch.kind is not BatchKind.BACKGROUND:
            return await self._answer(batch, item)
        dispatch = asyncio.create_task(self._answer(batch, item))
        self._dispatches[batch.id] = dispatch
        try:
            return await dispatch
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            return None
        finally:
            self._dispatches.pop(batch.id, None)

    async def _answer(self, batch: BatchRecord, item: WorkItem) -> DispatchedAnswer | None:
        """The line's answer; a 429 or 503 waits for its Retry-After and runs again, as long as
        the batch runs (None once it does not)."""
        body = at_batch_priority(item.body)
        while True:
            answer = await self._send(batch, body)
            if answer is None:
                BATCH_LINES.labels("preempted").inc()
                await self._wait_for_a_sending_slot()
                continue
            if answer.status not in RETRIED_STATUSES:
                return answer
            BATCH_LINES.labels("retried").inc()
            await asyncio.sleep(_retry_after(answer))
            if not _runs(await self.store.batch(batch.id)):
                return None

    async def _send(self, batch: BatchRecord, body: bytes) -> DispatchedAnswer | None:
        """The line's answer; None when it was preempted."""
        sending = asyncio.create_task(self.dispatcher.post(batch.endpoint, body, batch.tenant))
        self._sending.append(sending)
        try:
            return await sending
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # the worker stops
            return None
        finally:
            self._sending.remove(sending)

    async def _wait_for_a_sending_slot(self) -> None:
        """Until fewer lines are being sent than the capacity's limit (claims wait meanwhile:
        this line is still in flight)."""
        while len(self._sending) >= self.capacity.limit():
            await asyncio.sleep(IDLE_SECONDS)

    async def _renew(self, item: WorkItem) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                await self.store.renew(self.consumer, [item], self.settings.lease_seconds)
            except Exception:
                logger.warning("renewing the lease of a batch line failed; trying again", exc_info=True)


def _runs(batch: BatchRecord | None) -> bool:
    return batch is not None and batch.status is BatchStatus.IN_PROGRESS


def _records(batch: BatchRecord | None) -> bool:
    """Whether a line that ran still counts: in progress, or cancelling (a line already running
    when its batch was cancelled keeps its answer). A cancelled background request's answer is
    discarded: its client asked for it not to run."""
    if batch is None or batch.kind is BatchKind.BACKGROUND:
        return batch is not None and batch.status is BatchStatus.IN_PROGRESS
    return batch.status in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING)


def _ok(answer: DispatchedAnswer) -> bool:
    return HTTPStatus.OK <= answer.status < HTTPStatus.MULTIPLE_CHOICES


def _result(batch: BatchRecord, item: WorkItem, answer: DispatchedAnswer) -> LineResult:
    status = answer.status or HTTPStatus.INTERNAL_SERVER_ERROR
    try:
        body: object = json.loads(answer.body)
    except ValueError:
        body = answer.body.decode("utf-8", errors="replace")
    line = answered_line(batch.id, item.custom_id, status, answer.request_id or "", body)
    return LineResult(item.index, item.custom_id, _ok(answer), line)


def _retry_after(answer: DispatchedAnswer) -> float:
    """The answer's Retry-After (ms when given, else seconds), bounded; a default without one."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            seconds = float(answer.headers[name]) / scale
        except (KeyError, ValueError):
            continue
        if math.isfinite(seconds):
            return min(max(seconds, 0.05), MAX_RETRY_SECONDS)
    return DEFAULT_RETRY_SECONDS
