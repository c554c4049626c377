"""What the usage ledger holds: one UsageRecord per request the gateway billed, the UsageTotal of a
tenant's use of a model over a period, and the UsageLedger protocol that each kind of ledger
(router/gateway/sqlite_ledger.py, router/gateway/redis_ledger.py) keeps."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Protocol


class Endpoint(StrEnum):
    """The kinds of request the gateway tells apart: a record's `endpoint`."""

    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    OPENAI = "openai"  # the OpenAI edge's other routes: models, tokenize, detokenize
    WEBSOCKET = "websocket"
    V1_PREDICT = "v1.predict"
    V2_INFER = "v2.infer"

    @property
    def generates(self) -> bool:
        return self in (Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.WEBSOCKET)


ENDPOINTS = tuple(Endpoint)
OUTCOMES = ("ok", "cancelled", "failed", "cache_hit", "refused")


class LedgerUnavailable(Exception):
    """The ledger could not be written or read; the message says which ledger and why."""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request's billed usage; `request_id` is unique, so a record written twice counts once."""

    request_id: str
    tenant: str
    model: str  # the model that answered (a target's name), or the router's name for predict routes
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    outcome: str
    timestamp: float  # unix seconds

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("a usage record needs a request_id")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint {self.endpoint!r} is not one of {', '.join(ENDPOINTS)}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        if not math.isfinite(self.timestamp):
            raise ValueError(f"timestamp must be unix seconds, not {self.timestamp}")
        if self.prompt_tokens < 0 or self.completion_tokens < 0:
            raise ValueError(f"token counts cannot be negative: prompt {self.prompt_tokens}, "
                             f"completion {self.completion_tokens}")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> UsageRecord:
        return cls(**json.loads(data))


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """A tenant's use of one model over a period."""

    tenant: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageLedger(Protocol):
    """A durable, append-only record of billed usage."""

    async def append(self, record: UsageRecord) -> None:
        """Durable on return (fsynced, or acknowledged by the shared store)."""

    async def totals(self, tenant: str | None, start: float, end: float) -> list[UsageTotal]:
        """Per (tenant, model), sorted, of the records with start <= timestamp < end; every
        tenant's when `tenant` is None."""

    async def close(self) -> None:
        """Waits for the appends under way."""
