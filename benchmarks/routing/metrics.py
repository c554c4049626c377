"""RouteLLM's routing-quality metrics over a strategy's operating points (Ong et al., 2024, and
routellm/evals/evaluate.py): for each point, the share of calls that reached the large model and
the accuracy reached.

- PGR (performance gap recovered) = (accuracy - small) / (large - small).
- APGR: the area under the accuracy curve over the share of large calls, minus the small model's
  area, over the gap's area (trapezoids over the points, as RouteLLM computes it); a random router
  gets 0.5.
- CPT(x %) (call-performance threshold): the share of large calls needed to recover x % of the gap.
  RouteLLM interpolates the accuracy curve with numpy.interp, which assumes it rises; here the
  first crossing of the target is interpolated between its two points, which is the same on a
  rising curve and still right on one that dips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Point:
    """One operating point: a strategy at one setting."""

    setting: str
    large_share: float
    accuracy: float
    cost: float


def pgr(accuracy: float, small_accuracy: float, large_accuracy: float) -> float:
    return (accuracy - small_accuracy) / (large_accuracy - small_accuracy)


def _by_share(points: Sequence[Point]) -> list[Point]:
    return sorted(points, key=lambda point: (point.large_share, point.accuracy))


def _trapezoid(xs: Sequence[float], ys: Sequence[float]) -> float:
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))


def apgr(points: Sequence[Point], small_accuracy: float, large_accuracy: float) -> float | None:
    """None when the points span no range of shares."""
    ordered = _by_share(points)
    shares = [point.large_share for point in ordered]
    width = shares[-1] - shares[0]
    if width <= 0:
        return None
    area = _trapezoid(shares, [point.accuracy for point in ordered])
    return (area - small_accuracy * width) / ((large_accuracy - small_accuracy) * width)


def cpt(points: Sequence[Point], recovered: float, small_accuracy: float, large_accuracy: float) -> float | None:
    """The share of large calls at which `recovered` (0.5 for 50 %) of the gap is first reached,
    or None if no point reaches it."""
    target = small_accuracy + recovered * (large_accuracy - small_accuracy)
    ordered = _by_share(points)
    for previous, point in zip([None, *ordered], ordered):
        if point.accuracy >= target:
            if previous is None or previous.accuracy >= target:
                return point.large_share
            fraction = (target - previous.accuracy) / (point.accuracy - previous.accuracy)
            return previous.large_share + fraction * (point.large_share - previous.large_share)
    return None


def best_under_share(points: Sequence[Point], max_share: float) -> Point | None:
    """The most accurate point with at most `max_share` large calls (the cheaper of equals)."""
    eligible = [point for point in points if point.large_share <= max_share + 1e-9]
    return max(eligible, key=lambda point: (point.accuracy, -point.cost), default=None)
