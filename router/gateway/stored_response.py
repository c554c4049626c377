"""A whole answer as the gateway keeps it for idempotent retries and the response cache, with its
compact encoding for Redis, and the digest of a request body that both use to compare requests."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# The first line of an encoded StoredResponse; a new layout gets a new version, so an old router
# replica never misreads what a newer one stored.
ENCODING_VERSION = b"stored-response/1"


class UnreadableStoredResponse(ValueError):
    """Bytes that are not a StoredResponse of this encoding version."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A final answer: status, content type, the whole body (a JSON answer, or a whole
    server-sent-event stream, `[DONE]` included), the headers worth replaying (the caller picks
    them: x-route, x-route-* ...), and the usage the original answer was billed."""

    status: int
    content_type: str | None
    body: bytes
    headers: dict[str, str]
    prompt_tokens: int
    completion_tokens: int

    def to_bytes(self) -> bytes:
        """The version line, a JSON line of everything but the body, then the body's raw bytes."""
        header = {
            "status": self.status,
            "content_type": self.content_type,
            "headers": self.headers,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        return ENCODING_VERSION + b"\n" + _canonical_json(header) + b"\n" + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> StoredResponse:
        version, _, rest = data.partition(b"\n")
        if version != ENCODING_VERSION:
            raise UnreadableStoredResponse(f"stored response has version {version[:40]!r}, "
                                           f"this router reads {ENCODING_VERSION!r}")
        header_line, separator, body = rest.partition(b"\n")
        if not separator:
            raise UnreadableStoredResponse("stored response is truncated: no line ends its header")
        header = json.loads(header_line)
        return cls(
            status=header["status"], content_type=header["content_type"], body=body,
            headers=header["headers"], prompt_tokens=header["prompt_tokens"],
            completion_tokens=header["completion_tokens"],
        )


def body_digest(payload: bytes | dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a parsed body (sorted keys, no whitespace), so two
    bodies that differ only in key order or spacing have one digest; bytes that are not JSON are
    digested as they are."""
    if isinstance(payload, bytes):
        try:
            payload = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return hashlib.sha256(payload).hexdigest()
    return hashlib.sha256(_canonical_json(payload)).hexdigest()


def _canonical_json(value: Any) -> bytes:
    # ensure_ascii keeps the encoding free of raw newlines and of Unicode normalisation questions.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
