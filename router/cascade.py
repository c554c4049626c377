"""The cascade's rule: when the small model's answer is not good enough, ask the large model. An
answer is escalated when it is empty, when its confidence - the log-probability of its least
likely token - is under the configured floor, or (with `escalate_on_length`) when it was cut short
by a length limit that is not the client's own `max_tokens` (the small model's context, its
server's default). An answer that used up the client's `max_tokens` is judged on its confidence
alone: the large model would stop at the same length. The minimum rather than the mean, because one wild guess in
an otherwise fluent answer (a wrong number, a made-up name) is exactly what the mean averages
away."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from router.config import CascadeConfig


class Verdict(StrEnum):
    """Why an answer was escalated or kept; also the `reason` label of router_escalations_total."""

    EMPTY = "empty"
    LENGTH = "length"
    LOW_CONFIDENCE = "low_confidence"
    ACCEPTED = "accepted"
    CASCADE_DISABLED = "cascade_disabled"


@dataclass(frozen=True, slots=True)
class SmallAnswer:
    """What the cascade needs to know of the small model's answer."""

    text: str
    finish_reason: str | None
    confidence: float | None
    # Whether it has as many tokens as the client's max_tokens allowed (False when either is unknown).
    used_client_limit: bool = False


def confidence_of(token_logprobs: Sequence[float]) -> float | None:
    """An answer's confidence: its least likely token's log-probability (None without tokens)."""
    return min(token_logprobs) if token_logprobs else None


def should_escalate(answer: SmallAnswer, cascade: CascadeConfig) -> tuple[bool, Verdict]:
    """Whether to ask the large model instead, and why. An answer without a confidence (its
    logprobs were not reported) is judged on the other two rules only."""
    if not cascade.enabled:
        return False, Verdict.CASCADE_DISABLED
    if not answer.text.strip():
        return True, Verdict.EMPTY
    if answer.finish_reason == "length" and not answer.used_client_limit and cascade.escalate_on_length:
        return True, Verdict.LENGTH
    if answer.confidence is not None and answer.confidence < cascade.min_confidence:
        return True, Verdict.LOW_CONFIDENCE
    return False, Verdict.ACCEPTED


@dataclass(frozen=True, slots=True)
class CascadeTrace:
    """What the cascade (or an exploration) saw of a request: the verdict on the small model's
    answer and its confidence, why it was escalated, whether both models' answers agreed."""

    verdict: Verdict | None = None
    confidence: float | None = None
    escalated: str | None = None
    agreement: bool | None = None
    explored: bool = False
