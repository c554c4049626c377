"""Routing strategies evaluated over the suite's outcomes (each model's answer to every item, as
the stack gave them), each a sweep of operating points: where every item would have gone, which
answer the client would have got, and what it cost. The rules are the router's own: thresholds
come from router.calibrate's choose_threshold, escalations from router.cascade.should_escalate,
so a point here is what the router serves at that setting (the benchmark checks one live)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.routing.metrics import Point
from router.calibrate import choose_threshold
from router.cascade import SmallAnswer, should_escalate
from router.config import CascadeConfig
from task_models.skills import Item

SHARE_STEPS = [step / 20 for step in range(21)]
MIN_CONFIDENCE_GRID = [-20.0, -12.0, -8.0, -6.0, -5.0, -4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.25, -1.0, -0.75, -0.5,
                       -0.35, -0.25, -0.15, -0.1, -0.05, -0.02, -0.01, -0.001, 0.0]


@dataclass(frozen=True, slots=True)
class Answered:
    """One model's answer to one item."""

    text: str
    correct: bool
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    confidence: float | None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {"text": self.text, "correct": self.correct, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "finish_reason": self.finish_reason,
                "confidence": self.confidence}


@dataclass(frozen=True, slots=True)
class Outcome:
    item: Item
    small: Answered
    large: Answered

    @property
    def gain(self) -> bool:
        return self.large.correct and not self.small.correct


@dataclass(frozen=True, slots=True)
class Prices:
    """Cost per token of each model (any unit: the figures are compared with each other)."""

    small: float
    large: float


def point_of(setting: str, outcomes: Sequence[Outcome], prices: Prices, to_large: Sequence[bool],
           escalated: Sequence[bool] | None = None) -> Point:
    """`to_large`: sent straight to the large model; `escalated`: answered by the small one first,
    then by the large one (its cost counts both)."""
    escalated = escalated or [False] * len(outcomes)
    correct = cost = large_calls = 0.0
    for outcome, direct, second in zip(outcomes, to_large, escalated):
        uses_large = direct or second
        correct += outcome.large.correct if uses_large else outcome.small.correct
        cost += (0 if direct else outcome.small.tokens * prices.small) + (outcome.large.tokens * prices.large
                                                                            if uses_large else 0)
        large_calls += uses_large
    count = len(outcomes)
    return Point(setting, large_calls / count, correct / count, cost / count)


def single_model(outcomes: Sequence[Outcome], prices: Prices, large: bool) -> Point:
    return point_of("large" if large else "small", outcomes, prices, [large] * len(outcomes))


def random_points(outcomes: Sequence[Outcome], prices: Prices, shares: Sequence[float] = SHARE_STEPS) -> list[Point]:
    """A router that sends each item to the large model with probability `share`: its expected
    accuracy and cost, exactly (no sampling noise)."""
    small, large = single_model(outcomes, prices, False), single_model(outcomes, prices, True)
    return [Point(f"share {share:g}", share, (1 - share) * small.accuracy + share * large.accuracy,
                  (1 - share) * small.cost + share * large.cost) for share in shares]


def scored_points(outcomes: Sequence[Outcome], scores: Sequence[float], prices: Prices,
                  shares: Sequence[float] = SHARE_STEPS) -> list[Point]:
    """A scoring router at the thresholds router.calibrate would set for each target share."""
    return [scored_point(outcomes, scores, prices, threshold_for(scores, share)) for share in shares]


def threshold_for(scores: Sequence[float], share: float) -> float:
    return 1.0 + 1e-9 if share == 0 else choose_threshold(scores, share)


def scored_point(outcomes: Sequence[Outcome], scores: Sequence[float], prices: Prices, threshold: float) -> Point:
    return point_of(f"threshold {threshold:g}", outcomes, prices, [score >= threshold for score in scores])


def small_answer(outcome: Outcome, client_max_tokens: int | None) -> SmallAnswer:
    small = outcome.small
    used_limit = client_max_tokens is not None and small.completion_tokens >= client_max_tokens
    return SmallAnswer(small.text, small.finish_reason, small.confidence, used_limit)


def escalations(outcomes: Sequence[Outcome], cascade: CascadeConfig, client_max_tokens: int | None) -> list[bool]:
    return [should_escalate(small_answer(outcome, client_max_tokens), cascade)[0] for outcome in outcomes]


def cascade_points(outcomes: Sequence[Outcome], prices: Prices, client_max_tokens: int | None,
                   escalate_on_length: bool, grid: Sequence[float] = MIN_CONFIDENCE_GRID) -> list[Point]:
    """Every item to the small model first, escalated by the cascade at each min_confidence."""
    points = []
    for min_confidence in grid:
        cascade = CascadeConfig(min_confidence=min_confidence, escalate_on_length=escalate_on_length)
        points.append(point_of(f"min_confidence {min_confidence:g}", outcomes, prices, [False] * len(outcomes),
                             escalations(outcomes, cascade, client_max_tokens)))
    return points


def routed_cascade_points(outcomes: Sequence[Outcome], scores: Sequence[float], prices: Prices,
                          cascade: CascadeConfig, client_max_tokens: int | None,
                          shares: Sequence[float] = SHARE_STEPS) -> list[Point]:
    """A scoring router in front of the cascade: above the threshold straight to the large model,
    below it to the small one, escalated when the cascade says so."""
    escalate = escalations(outcomes, cascade, client_max_tokens)
    points = []
    for share in shares:
        threshold = threshold_for(scores, share)
        to_large = [score >= threshold for score in scores]
        second = [not direct and escalated for direct, escalated in zip(to_large, escalate)]
        points.append(point_of(f"threshold {threshold:g}, min_confidence {cascade.min_confidence:g}", outcomes, prices,
                             to_large, second))
    return points
