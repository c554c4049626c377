"""Routing strategies evaluated over the suite's outcomes (each model's answer to every item, as
the stack gave them), each a sweep of operating points: where every item would have gone, which
answer the client would have got, and what it cost. The rules are the router's own: thresholds
come from router.calibrate's choose_threshold, escalations from router.cascade.should_escalate,
so a point here is what the router serves at that setting (the benchmark checks one live). An
item is anything with a prompt: the task models' suite (task_models.skills.Item) or the real
models' (benchmarks/routing/suites.SuiteItem)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from benchmarks.routing.metrics import Point
from router.calibrate import choose_threshold
from router.cascade import SmallAnswer, should_escalate
from router.config import CascadeConfig

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


class Asked(Protocol):
    """An item of a suite, as far as the strategies go: a prompt, which routers score."""

    prompt: str


@dataclass(frozen=True, slots=True)
class Outcome:
    item: Asked
    small: Answered
    large: Answered

    @property
    def gain(self) -> bool:
        return self.large.correct and not self.small.correct

    @property
    def large_advantage(self) -> int:
        """1 where only the large model is right, -1 where only the small one is, else 0."""
        return int(self.large.correct) - int(self.small.correct)


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


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a strategy at one setting sends each item: straight to the large model (`to_large`),
    or to the small one and then, when `escalated`, to the large one too."""

    setting: str
    to_large: list[bool]
    escalated: list[bool]

    def point(self, outcomes: Sequence[Outcome], prices: Prices) -> Point:
        return point_of(self.setting, outcomes, prices, self.to_large, self.escalated)

    def correct(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Whether the answer the client got is right, item by item."""
        return [(outcome.large if direct or second else outcome.small).correct
                for outcome, direct, second in zip(outcomes, self.to_large, self.escalated)]


def threshold_for(scores: Sequence[float], share: float) -> float:
    return 1.0 + 1e-9 if share == 0 else choose_threshold(scores, share)


def scored_routings(scores: Sequence[float], shares: Sequence[float] = SHARE_STEPS) -> list[Routing]:
    """A scoring router at the thresholds router.calibrate would set for each target share."""
    routings = []
    for share in shares:
        threshold = threshold_for(scores, share)
        routings.append(Routing(f"threshold {threshold:g}", [score >= threshold for score in scores],
                                [False] * len(scores)))
    return routings


def scored_points(outcomes: Sequence[Outcome], scores: Sequence[float], prices: Prices,
                  shares: Sequence[float] = SHARE_STEPS) -> list[Point]:
    return [routing.point(outcomes, prices) for routing in scored_routings(scores, shares)]


def group_means(outcomes: Sequence[Outcome], group_of: Callable[[Outcome], Hashable],
                value_of: Callable[[Outcome], float], measured_on: Sequence[Outcome] | None = None) -> list[float]:
    """Each outcome's score: the mean of `value_of` over the outcomes of its group (`group_of`) in
    `measured_on` (the outcomes themselves unless given); 0 for a group that has none there. A
    router that reads only the group can do no better than these scores."""
    groups: dict[Hashable, list[float]] = {}
    for outcome in outcomes if measured_on is None else measured_on:
        groups.setdefault(group_of(outcome), []).append(value_of(outcome))
    means = {group: sum(values) / len(values) for group, values in groups.items()}
    return [means.get(group_of(outcome), 0.0) for outcome in outcomes]


def small_answer(outcome: Outcome, client_max_tokens: int | None) -> SmallAnswer:
    small = outcome.small
    used_limit = client_max_tokens is not None and small.completion_tokens >= client_max_tokens
    return SmallAnswer(small.text, small.finish_reason, small.confidence, used_limit)


def escalations(outcomes: Sequence[Outcome], cascade: CascadeConfig, client_max_tokens: int | None) -> list[bool]:
    return [should_escalate(small_answer(outcome, client_max_tokens), cascade)[0] for outcome in outcomes]


def cascade_routings(outcomes: Sequence[Outcome], client_max_tokens: int | None, escalate_on_length: bool,
                     grid: Sequence[float] = MIN_CONFIDENCE_GRID) -> list[Routing]:
    """Every item to the small model first, escalated by the cascade at each min_confidence."""
    routings = []
    for min_confidence in grid:
        cascade = CascadeConfig(min_confidence=min_confidence, escalate_on_length=escalate_on_length)
        routings.append(Routing(f"min_confidence {min_confidence:g}", [False] * len(outcomes),
                                escalations(outcomes, cascade, client_max_tokens)))
    return routings


def cascade_points(outcomes: Sequence[Outcome], prices: Prices, client_max_tokens: int | None,
                   escalate_on_length: bool, grid: Sequence[float] = MIN_CONFIDENCE_GRID) -> list[Point]:
    return [routing.point(outcomes, prices)
            for routing in cascade_routings(outcomes, client_max_tokens, escalate_on_length, grid)]


def routed_cascade_routings(outcomes: Sequence[Outcome], scores: Sequence[float], cascade: CascadeConfig,
                            client_max_tokens: int | None, shares: Sequence[float] = SHARE_STEPS) -> list[Routing]:
    """A scoring router in front of the cascade: above the threshold straight to the large model,
    below it to the small one, escalated when the cascade says so."""
    escalate = escalations(outcomes, cascade, client_max_tokens)
    routings = []
    for routing in scored_routings(scores, shares):
        second = [not direct and escalated for direct, escalated in zip(routing.to_large, escalate)]
        routings.append(Routing(f"{routing.setting}, min_confidence {cascade.min_confidence:g}", routing.to_large,
                                second))
    return routings


def routed_cascade_points(outcomes: Sequence[Outcome], scores: Sequence[float], prices: Prices,
                          cascade: CascadeConfig, client_max_tokens: int | None,
                          shares: Sequence[float] = SHARE_STEPS) -> list[Point]:
    return [routing.point(outcomes, prices)
            for routing in routed_cascade_routings(outcomes, scores, cascade, client_max_tokens, shares)]
