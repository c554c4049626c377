"""OpenAI's File and Batch objects as this router answers them, the objects of background
requests, their ids, the lines of a batch's output and error files, and the checks of a create request's own fields (endpoint, completion
window, metadata) with OpenAI's limits. Wire shapes only: nothing here reads or writes the store."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from enum import StrEnum

from router.batch.store import BatchRecord, BatchStatus, FileRecord, LineResult

FILE_PREFIX = "file-"
BATCH_PREFIX = "batch_"
BATCH_REQUEST_PREFIX = "batch_req_"
BACKGROUND_PREFIX = "bgreq_"
# The request body field that submits a completion for later (router/batch/background.py).
BACKGROUND_FIELD = "background"
# The custom_id of a background request's one line.
BACKGROUND_LINE_ID = "request"
INPUT_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
PURPOSES = (INPUT_PURPOSE, OUTPUT_PURPOSE)
# The endpoints a batch's lines may call (OpenAI's url, under this router's /openai prefix).
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
# OpenAI accepts only 24h; `<n>s|m|h|d` from 1 s to 7 d is this router's extension (short
# windows make expiry testable, long ones suit slow spare capacity).
OPENAI_COMPLETION_WINDOW = "24h"
_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_COMPLETION_WINDOW_SECONDS = 7 * 86400
# OpenAI's limits on a batch's metadata.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
# The codes of lines that never ran, in the error file.
EXPIRED_CODE = "batch_expired"
CANCELLED_CODE = "batch_cancelled"
EXPIRED_BACKGROUND_CODE = "background_expired"
CANCELLED_BACKGROUND_CODE = "background_cancelled"


class BatchRequestError(ValueError):
    """A create or list request the client must fix: 400, with the field (`param`) it names."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


# Ids ------------------------------------------------------------------------------------

def new_file_id() -> str:
    return FILE_PREFIX + uuid.uuid4().hex


def new_batch_id() -> str:
    return BATCH_PREFIX + uuid.uuid4().hex


def new_background_id() -> str:
    return BACKGROUND_PREFIX + uuid.uuid4().hex


def produced_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output or error file, the same every time: a replica that finalizes
    again after another died mid-way writes the same files, not a second pair."""
    return FILE_PREFIX + _digest(f"{batch_id}/{kind}")


def batch_request_id(batch_id: str, custom_id: str) -> str:
    """The id of a line's output: one per (batch, custom_id), however often the line ran."""
    return BATCH_REQUEST_PREFIX + _digest(f"{batch_id}/{custom_id}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# Create fields --------------------------------------------------------------------------

def completion_window_seconds(window: object) -> int:
    """The window's length; BatchRequestError naming what is accepted."""
    match = _WINDOW.match(window) if isinstance(window, str) else None
    seconds = int(match.group(1)) * _WINDOW_UNITS[match.group(2)] if match else 0
    if not 1 <= seconds <= MAX_COMPLETION_WINDOW_SECONDS:
        raise BatchRequestError(f"completion_window must be {OPENAI_COMPLETION_WINDOW!r} (or, as this router's "
                                f"extension, <n>s, <n>m, <n>h or <n>d from 1s to 7d); got {window!r}",
                                "completion_window")
    return seconds


def check_endpoint(endpoint: object) -> str:
    if endpoint not in BATCH_ENDPOINTS:
        raise BatchRequestError(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}; got {endpoint!r}", "endpoint",
                                "invalid_endpoint")
    return endpoint


def check_metadata(metadata: object) -> dict[str, str] | None:
    """OpenAI's metadata: at most 16 string pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(key, str) and isinstance(value, str)
                                                 for key, value in metadata.items()):
        raise BatchRequestError("metadata must be an object of string keys and string values", "metadata")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise BatchRequestError(f"metadata may hold at most {MAX_METADATA_PAIRS} pairs; got {len(metadata)}",
                                "metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise BatchRequestError(f"metadata keys may be at most {MAX_METADATA_KEY_CHARS} characters; "
                                    f"{key[:80]!r} has {len(key)}", "metadata")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise BatchRequestError(f"metadata values may be at most {MAX_METADATA_VALUE_CHARS} characters; "
                                    f"the value of {key!r} has {len(value)}", "metadata")
    return metadata


def check_limit(limit: int) -> int:
    if not 1 <= limit <= 10000:
        raise BatchRequestError(f"limit must be from 1 to 10000; got {limit}", "limit")
    return limit


# Objects --------------------------------------------------------------------------------

def file_object(record: FileRecord) -> dict:
    return {"id": record.id, "object": "file", "bytes": record.bytes, "created_at": record.created_at,
            "filename": record.filename, "purpose": record.purpose, "status": "processed",
            "expires_at": record.expires_at, "status_details": None}


def batch_object(record: BatchRecord, completed: int, failed: int) -> dict:
    """OpenAI's Batch; `completed` and `failed` are the store's counts of the batch's results."""
    times = record.times
    errors = {"object": "list", "data": record.errors} if record.errors else None
    return {
        "id": record.id, "object": "batch", "endpoint": record.endpoint, "errors": errors,
        "input_file_id": record.input_file_id, "completion_window": record.completion_window,
        "status": str(record.status), "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id, "created_at": record.created_at,
        "in_progress_at": times.get("in_progress_at"), "expires_at": record.expires_at,
        "finalizing_at": times.get("finalizing_at"), "completed_at": times.get("completed_at"),
        "failed_at": times.get("failed_at"), "expired_at": times.get("expired_at"),
        "cancelling_at": times.get("cancelling_at"), "cancelled_at": times.get("cancelled_at"),
        "request_counts": {"total": record.total, "completed": completed, "failed": failed},
        "metadata": record.metadata,
    }


class BackgroundStatus(StrEnum):
    """A background request's statuses, as OpenAI's background responses name them."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


FINAL_BACKGROUND_STATUSES = frozenset({BackgroundStatus.COMPLETED, BackgroundStatus.FAILED,
                                       BackgroundStatus.CANCELLED, BackgroundStatus.EXPIRED})


def background_status(record: BatchRecord, result: LineResult | None) -> BackgroundStatus:
    """The status a client sees. Finalizing counts as its ending (a background request has no
    files to write, so it is there for an instant); cancelling as cancelled (its line will not run,
    and an answer that comes meanwhile is discarded); a request whose answer was not 2xx failed."""
    status = record.ending if record.status is BatchStatus.FINALIZING and record.ending else record.status
    if status is BatchStatus.IN_PROGRESS:
        started = "in_progress_at" in record.times
        return BackgroundStatus.IN_PROGRESS if started else BackgroundStatus.QUEUED
    if status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return BackgroundStatus.CANCELLED
    if status is BatchStatus.EXPIRED:
        return BackgroundStatus.EXPIRED
    if status is BatchStatus.COMPLETED and result is not None and result.ok:
        return BackgroundStatus.COMPLETED
    return BackgroundStatus.FAILED


def background_object(record: BatchRecord, result: LineResult | None) -> dict:
    """A background request: `response` is its answer as a batch output line has it (status_code,
    request_id, body), once it has one; `error` says why one that ended never ran."""
    status = background_status(record, result)
    times = record.times
    # Cancelling ends at once (finalizing, then cancelled): finalizing_at is when it was asked.
    cancelled_at = times.get("finalizing_at") if status is BackgroundStatus.CANCELLED else None
    response = json.loads(result.line)["response"] if result is not None and status in (
        BackgroundStatus.COMPLETED, BackgroundStatus.FAILED) else None
    error = None
    if status is BackgroundStatus.EXPIRED:
        error = {"code": EXPIRED_BACKGROUND_CODE, "message": "this request could not be run before its completion "
                                                             f"window ({record.completion_window}) passed"}
    elif status is BackgroundStatus.CANCELLED:
        error = {"code": CANCELLED_BACKGROUND_CODE, "message": "this request was cancelled"}
    elif status is BackgroundStatus.FAILED and response is None:
        error = {"code": "background_failed", "message": "this request ended without an answer"}
    return {
        "id": record.id, "object": "background.request", "endpoint": record.endpoint, "model": record.model,
        "status": str(status), "created_at": record.created_at, "started_at": times.get("in_progress_at"),
        "completed_at": times.get("completed_at"), "cancelled_at": cancelled_at,
        "expires_at": record.expires_at, "response": response, "error": error,
    }


def list_object(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


# Output lines ---------------------------------------------------------------------------

def answered_line(batch_id: str, custom_id: str, status: int, request_id: str, body: object) -> bytes:
    """A line that ran: the output file's when its answer is 2xx, the error file's otherwise."""
    response = {"status_code": status, "request_id": request_id, "body": body}
    return _line(batch_id, custom_id, response, None)


def unanswered_line(batch_id: str, custom_id: str, ending: BatchStatus) -> bytes:
    """A line that never ran because its batch expired or was cancelled."""
    if ending is BatchStatus.EXPIRED:
        error = {"code": EXPIRED_CODE, "message": "this request could not be executed before the completion window "
                                                  "expired"}
    else:
        error = {"code": CANCELLED_CODE, "message": "this request was not executed: its batch was cancelled"}
    return _line(batch_id, custom_id, None, error)


def _line(batch_id: str, custom_id: str, response: dict | None, error: dict | None) -> bytes:
    line = {"id": batch_request_id(batch_id, custom_id), "custom_id": custom_id, "response": response, "error": error}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode()
