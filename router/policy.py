"""The cost/capability routing policy: a score in [0, 1] of how much a request needs the large
model, the sum of each feature's weight times its activation (capped at 1), compared with a
threshold calibrated to a share of large-model traffic (router.calibrate). A decision carries its
score and every feature's part in it, so it explains itself; an explicit hint overrides it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from router.features import (
    MARKER_CATEGORIES,
    Measurement,
    RoutingRequest,
    ScannedWindow,
    TokenCounter,
    measure_conversation_depth,
    measure_markers,
    measure_max_tokens,
    measure_prompt_tokens,
)


class Route(StrEnum):
    SMALL = "small"
    LARGE = "large"

    @property
    def other(self) -> Route:
        return Route.LARGE if self is Route.SMALL else Route.SMALL


# Priors, not fitted weights: what the threshold is calibrated for is the mix of traffic, and these
# say how far each signal alone should move a request towards the large model. Code, maths and a
# long context are where small models fail most visibly; multi-step requests nearly as much; a
# long requested answer or a deep conversation only nudge.
DEFAULT_WEIGHTS: dict[str, float] = {
    "prompt_tokens": 0.35,
    "code": 0.35,
    "math": 0.35,
    "multi_step": 0.3,
    "max_tokens": 0.15,
    "conversation_depth": 0.1,
}
FEATURE_NAMES = tuple(DEFAULT_WEIGHTS)
HINT_FEATURE = "hint"
CAPABILITY = "capability"
# Scores are rounded before they are compared, so the score a decision shows is the one it used.
SCORE_DECIMALS = 4


def check_weights(weights: Mapping[str, float]) -> None:
    """Raises ValueError unless every name is a feature's and every weight is >= 0."""
    unknown = sorted(set(weights) - set(FEATURE_NAMES))
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; the features are {', '.join(FEATURE_NAMES)}")
    negative = sorted(name for name, weight in weights.items() if not weight >= 0)
    if negative:
        raise ValueError(f"weights must be >= 0, got {', '.join(f'{name}={weights[name]}' for name in negative)}")


@dataclass(frozen=True, slots=True)
class FeatureScore:
    name: str
    weight: float
    measurement: Measurement

    @property
    def contribution(self) -> float:
        return self.weight * self.measurement.activation

    def as_dict(self) -> dict:
        described = {
            "value": self.measurement.value,
            "activation": round(self.measurement.activation, SCORE_DECIMALS),
            "weight": self.weight,
            "contribution": round(self.contribution, SCORE_DECIMALS),
        }
        if self.measurement.detail is not None:
            described["detail"] = self.measurement.detail
        return described


@dataclass(frozen=True, slots=True)
class Hint:
    """A route the client asked for explicitly, and where it said so."""

    route: Route
    source: str


def parse_hint(value: str, source: str) -> Hint:
    """Raises ValueError naming the allowed values."""
    try:
        return Hint(Route(value.strip().lower()), source)
    except ValueError:
        allowed = " or ".join(repr(route.value) for route in Route)
        raise ValueError(f"{source}: the route must be {allowed}, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    score: float
    threshold: float
    features: tuple[FeatureScore, ...]
    # Set when the route is not the one the score or the hint chose, because that target cannot
    # serve the request (router/capability.py): says why.
    capability: str | None = None

    @property
    def decided_by(self) -> str:
        """What chose the route: `capability`, `hint` or `policy`."""
        if self.capability is not None:
            return CAPABILITY
        return HINT_FEATURE if any(feature.name == HINT_FEATURE for feature in self.features) else "policy"

    def as_dict(self) -> dict:
        """The decision as JSON, features ordered by how much they drove the score."""
        ordered = sorted(self.features, key=lambda feature: feature.contribution, reverse=True)
        described = {
            "route": self.route.value,
            "score": self.score,
            "threshold": self.threshold,
            "features": {feature.name: feature.as_dict() for feature in ordered},
        }
        if self.capability is not None:
            described[CAPABILITY] = self.capability
        return described


class RoutingPolicy:
    def __init__(
        self,
        threshold: float,
        weights: Mapping[str, float] | None = None,
        token_counter: TokenCounter | None = None,
    ) -> None:
        """`weights` override DEFAULT_WEIGHTS by feature name."""
        check_weights(weights or {})
        self.threshold = threshold
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.token_counter = token_counter or TokenCounter()

    def measure(self, request: RoutingRequest) -> tuple[FeatureScore, ...]:
        window = ScannedWindow.of(request)
        measurements = {
            "prompt_tokens": measure_prompt_tokens(request, self.token_counter),
            **{category: measure_markers(category, window) for category in MARKER_CATEGORIES},
            "max_tokens": measure_max_tokens(request),
            "conversation_depth": measure_conversation_depth(request),
        }
        return tuple(FeatureScore(name, self.weights[name], measurements[name]) for name in FEATURE_NAMES)

    def decide(self, request: RoutingRequest, hint: Hint | None = None) -> Decision:
        if hint is not None:
            return follow_hint(hint, self.threshold)
        features = self.measure(request)
        score = round(min(1.0, sum(feature.contribution for feature in features)), SCORE_DECIMALS)
        route = Route.LARGE if score >= self.threshold else Route.SMALL
        return Decision(route, score, self.threshold, features)


def follow_hint(hint: Hint, threshold: float) -> Decision:
    """The decision a hint imposes: its route, scored 1 (large) or 0 (small)."""
    score = 1.0 if hint.route is Route.LARGE else 0.0
    feature = FeatureScore(HINT_FEATURE, 1.0, Measurement(hint.route.value, score, hint.source))
    return Decision(hint.route, score, threshold, (feature,))


def batch_decision(decisions: Sequence[Decision]) -> Decision:
    """A batch goes to one target as one request, so it goes where its most demanding request
    needs: the decision with the highest score (the first of equals) decides for all."""
    return max(decisions, key=lambda decision: decision.score)
