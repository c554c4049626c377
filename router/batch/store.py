"""The durable state of asynchronous work, shared by the router's replicas: uploaded and produced
files, batches, the queue of their lines, and each line's result. Two stores keep it: an embedded
SQLite file (one replica; router/batch/sqlite_store.py) and Redis (replicas share the work through
a Stream's consumer group; router/batch/redis_store.py).

Delivery is at least once: a claimed line whose lease runs out (its worker died, or was killed
with -9) is claimed again by another worker. Results are kept once per (batch, custom_id): the
first recorded wins, so the output holds exactly one line per input line however often one ran."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Protocol


class BatchStatus(StrEnum):
    """OpenAI's batch statuses. `validating` is only ever seen inside the create call (a file is
    validated before the batch is stored)."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


class BatchKind(StrEnum):
    """What a stored batch is: a batch of the Batch API, or a background request (a batch of one
    line, router/batch/background.py), which /v1/batches never shows and which has no files."""

    BATCH = "batch"
    BACKGROUND = "background"


# The statuses a batch never leaves.
FINAL_STATUSES = frozenset({BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})
# The statuses the sweeper watches (`active_batches`).
ACTIVE_STATUSES = frozenset({BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING})


class BatchStoreUnavailable(Exception):
    """The store could not be read or written (its SQLite file, or Redis); the message says which
    store, what it was doing and why."""


@dataclass(frozen=True, slots=True)
class FileRecord:
    """An uploaded (purpose `batch`) or produced (`batch_output`) file; its bytes are kept apart."""

    id: str
    tenant: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    expires_at: int | None = None


@dataclass(slots=True)
class BatchRecord:
    """A batch as stored. `request_counts` are not stored here: the store counts the results."""

    id: str
    tenant: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int
    total: int
    metadata: dict[str, str] | None = None
    # `*_at` times of the statuses reached (in_progress_at, finalizing_at, completed_at, failed_at,
    # expired_at, cancelling_at, cancelled_at), unix seconds.
    times: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    # OpenAI's `errors.data`: [{"code", "message", "param", "line"}], for a batch that failed validation.
    errors: list[dict] | None = None
    # What finalizing ends in: completed, expired or cancelled.
    ending: BatchStatus | None = None
    # Records stored before kinds existed are batches.
    kind: BatchKind = BatchKind.BATCH
    # The model a background request asked for (its object's `model`); None for a batch.
    model: str | None = None


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One line of a batch (or one background request: a batch of one), as claimed from the queue.
    `receipt` identifies this delivery to renew and ack (a SQLite row id, a Stream entry id)."""

    batch_id: str
    index: int
    custom_id: str
    body: bytes
    receipt: str
    deliveries: int


@dataclass(frozen=True, slots=True)
class LineResult:
    index: int
    custom_id: str
    ok: bool
    line: bytes  # the output or error file's JSON line, without its newline


class BatchStore(Protocol):
    # Files ------------------------------------------------------------------------------
    async def add_file(self, record: FileRecord, content: bytes) -> None:
        """Store a file; one with the same id is replaced (finalizing again writes the same ids)."""

    async def file(self, file_id: str) -> FileRecord | None: ...

    async def file_content(self, file_id: str) -> bytes | None: ...

    async def files(self, tenant: str, purpose: str | None, after: str | None, limit: int,
                    descending: bool) -> list[FileRecord]:
        """The tenant's files by creation (then id), after the file `after` in that order."""

    async def delete_file(self, file_id: str) -> bool: ...

    # Batches ----------------------------------------------------------------------------
    async def add_batch(self, record: BatchRecord, lines: list[tuple[str, bytes]]) -> None:
        """Store a batch and, in the same transaction, queue its (custom_id, body) lines in order
        (none for a batch that failed validation)."""

    async def batch(self, batch_id: str) -> BatchRecord | None: ...

    async def batches(self, tenant: str, after: str | None, limit: int) -> list[BatchRecord]:
        """The tenant's batches (kind batch only), newest first, after the batch `after` in that order."""

    async def active_batches(self) -> list[BatchRecord]:
        """Every batch in progress, finalizing or cancelling (for the sweeper: expiry,
        cancellation, and finalizing again after a crash)."""

    async def transition(self, batch_id: str, from_statuses: frozenset[BatchStatus], to: BatchStatus,
                         at: int, **changes: object) -> BatchRecord | None:
        """Atomically: if the batch's status is one of `from_statuses`, set it to `to`, record
        `times[f"{to}_at"] = at` and apply `changes` (BatchRecord fields); the new record, or
        None when its status was another (another replica got there first)."""

    async def background_requests(self, created_before: int, limit: int) -> list[BatchRecord]:
        """Up to `limit` background requests created before `created_before`, oldest first: the
        sweeper's candidates for deletion once their retention has passed."""

    async def delete_batch(self, batch_id: str) -> None:
        """Remove a batch that has ended, with its results (its lines were acked when it ended)."""

    # Results ----------------------------------------------------------------------------
    async def record_result(self, batch_id: str, result: LineResult) -> tuple[bool, int, int]:
        """Keep a line's result unless its custom_id has one already: (whether this one was
        kept, completed count, failed count) after it."""

    async def has_result(self, batch_id: str, custom_id: str) -> bool: ...

    async def counts(self, batch_id: str) -> tuple[int, int]:
        """(completed, failed) lines of a batch."""

    async def results(self, batch_id: str) -> list[LineResult]:
        """A batch's results in line order."""

    # The queue --------------------------------------------------------------------------
    async def claim(self, consumer: str, count: int, lease_seconds: float) -> list[WorkItem]:
        """Up to `count` lines for `consumer`: first those whose lease ran out (their consumer is
        gone), then new ones in queue order. Each claimed line is leased to `consumer` for
        `lease_seconds`; an empty list when there is none. Every consumer claims with the same
        `lease_seconds`: on Redis a lease runs out when its line has been idle (unclaimed and
        unrenewed) for the `lease_seconds` of the claim that asks."""

    async def renew(self, consumer: str, items: list[WorkItem], lease_seconds: float) -> None:
        """Extend the leases of lines still being worked on, those still `consumer`'s (a line
        another consumer has claimed since stays its). Call it well within the lease: on Redis it
        restarts the lease the claims measure, whatever `lease_seconds` says."""

    async def ack(self, items: list[WorkItem]) -> None:
        """Remove lines from the queue for good (done, or their batch ended)."""

    async def close(self) -> None: ...


# BatchRecord fields that `transition` sets itself or that never change.
_FIELDS_NOT_CHANGEABLE = frozenset({"id", "status", "times"})
_BATCH_FIELDS = frozenset(batch_field.name for batch_field in fields(BatchRecord))


def check_changes(changes: dict[str, object]) -> None:
    """Refuses `transition` changes that are not BatchRecord fields it may set, before anything
    is written."""
    unknown = sorted(set(changes) - _BATCH_FIELDS)
    if unknown:
        raise ValueError(f"transition: {', '.join(unknown)} are not BatchRecord fields")
    refused = sorted(set(changes) & _FIELDS_NOT_CHANGEABLE)
    if refused:
        raise ValueError(f"transition: {', '.join(refused)} cannot be changed (status and times are set by "
                         f"the transition itself, id never)")


def batch_to_dict(record: BatchRecord) -> dict[str, Any]:
    """The record as JSON-ready values (statuses are strings already: StrEnum)."""
    return {batch_field.name: getattr(record, batch_field.name) for batch_field in fields(BatchRecord)}


def batch_from_dict(data: dict[str, Any]) -> BatchRecord:
    """The record that batch_to_dict gave, after a JSON round trip."""
    ending = data.get("ending")
    return BatchRecord(**{**data, "status": BatchStatus(data["status"]),
                          "ending": None if ending is None else BatchStatus(ending),
                          "kind": BatchKind(data.get("kind", BatchKind.BATCH))})

