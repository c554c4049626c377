"""The router's decision log (opt-in: `learning.decision_log` in its config): one JSON line per
request its OpenAI edge routed, with what the cascade saw, so that `python -m router.train` can
learn from the router's own traffic. Its prompts are kept as the config says:

- `full`: the text as it came;
- `redacted`: digits replaced by 0 (numbers keep their length, which is all the learned policy reads
  of them), e-mail addresses and URLs by placeholders;
- `hashed`: no text at all, only its SHA-256 and the learned policy's hashed features of it, which
  router.train can still fit on (they are not the text, but a determined reader with a guess can
  check it against them: treat the file as sensitive anyway).

Lines are written by a thread of their own, so the event loop never waits on the disk; a full
queue drops lines (counted in router_decision_log_dropped_total) rather than hold up requests."""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from prometheus_client import Counter

from router.features import RoutingRequest
from router.text_features import FEATURIZER_VERSION, TextFeatures

logger = logging.getLogger(__name__)

QUEUE_LINES = 10_000
_DIGIT = re.compile(r"\d")
_EMAIL = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
_URL = re.compile(r"\bhttps?://[^\s<>\"']{1,2048}")

DROPPED_LINES = Counter("router_decision_log_dropped", "Decision log lines dropped because the writer fell behind.",
                        ["model_name"])


class DecisionLogError(Exception):
    """The decision log cannot be opened for appending: the message says which file and why."""


class PromptLogging(StrEnum):
    FULL = "full"
    REDACTED = "redacted"
    HASHED = "hashed"


def redact(text: str) -> str:
    """The text with URLs, e-mail addresses and digits masked (see the module's docstring)."""
    text = _URL.sub("<url>", text)
    text = _EMAIL.sub("<email>", text)
    return _DIGIT.sub("0", text)


class HashedFeatures(BaseModel):
    """The learned policy's input for a prompt whose text is not kept."""

    model_config = ConfigDict(extra="forbid")

    version: int
    buckets: int
    sparse: dict[int, float]
    dense: list[float]

    @classmethod
    def of(cls, features: TextFeatures, num_buckets: int) -> HashedFeatures:
        return cls(version=FEATURIZER_VERSION, buckets=num_buckets, sparse=features.sparse,
                   dense=[round(float(value), 6) for value in features.dense])

    def usable(self, num_buckets: int) -> bool:
        return self.version == FEATURIZER_VERSION and self.buckets == num_buckets

    def text_features(self) -> TextFeatures:
        return TextFeatures(dict(self.sparse), np.asarray(self.dense, dtype=np.float32))


class CascadeOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: str
    confidence: float | None = None


class LoggedDecision(BaseModel):
    """One line of the log."""

    model_config = ConfigDict(extra="ignore")

    time: float = Field(default_factory=time.time)
    request_id: str | None = None
    route: str
    decided_by: str
    score: float | None = None
    explored: bool = False
    prompt: str | None = None
    prompt_sha256: str | None = None
    features: HashedFeatures | None = None
    user_turns: int = 1
    max_tokens: int | None = None
    prompt_tokens: int | None = None
    cascade: CascadeOutcome | None = None
    answered_by: str | None = None
    # Whether the small and the large model gave the same answer, when both answered.
    agreement: bool | None = None

    def routing_request(self) -> RoutingRequest:
        return RoutingRequest(self.prompt or "", self.user_turns, self.max_tokens, self.prompt_tokens)


def weak_label(logged: LoggedDecision) -> bool | None:
    """Whether the large model was worth it for this request, as far as the log can tell (None:
    the small model never answered it, so the log cannot)."""
    if logged.agreement is not None and (logged.explored or logged.cascade is not None):
        return not logged.agreement
    if logged.cascade is not None and logged.cascade.verdict == "accepted":
        return False
    return None


def prompt_fields(request: RoutingRequest, mode: PromptLogging, features: TextFeatures | None,
                  num_buckets: int) -> dict:
    """The log fields that stand for the prompt under `mode`."""
    digest = hashlib.sha256(request.text.encode()).hexdigest()
    fields: dict = {"prompt_sha256": digest, "user_turns": request.user_turns, "max_tokens": request.max_tokens,
                    "prompt_tokens": request.prompt_tokens}
    if mode is PromptLogging.FULL:
        fields["prompt"] = request.text
    elif mode is PromptLogging.REDACTED:
        fields["prompt"] = redact(request.text)
    elif features is not None:
        fields["features"] = HashedFeatures.of(features, num_buckets)
    return fields


class DecisionLog:
    """Appends LoggedDecision lines to a file from a thread of its own."""

    def __init__(self, path: str | Path, model_name: str) -> None:
        self.path = Path(path)
        self.model_name = model_name
        self._lines: queue.Queue[str | None] = queue.Queue(QUEUE_LINES)
        # Opened here, so that a path the router cannot write fails its start, not its first request.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise DecisionLogError(f"cannot open the decision log {str(self.path)!r}: {exc.strerror}") from None
        self._writer = threading.Thread(target=self._write_lines, name="decision-log", daemon=True)
        self._writer.start()

    def record(self, decision: LoggedDecision) -> None:
        try:
            self._lines.put_nowait(decision.model_dump_json(exclude_none=True))
        except queue.Full:
            DROPPED_LINES.labels(self.model_name).inc()

    def close(self) -> None:
        """Writes what is queued, then closes the file."""
        self._lines.put(None)
        self._writer.join()
        self._file.close()

    def _write_lines(self) -> None:
        while (line := self._lines.get()) is not None:
            self._file.write(line + "\n")
            if self._lines.empty():
                self._file.flush()
        self._file.flush()
