"""RouteLLM's metrics as benchmarks/routing_quality.py computes them, on outcomes whose answers are
known: random routing recovers the gap linearly (APGR 0.5), an oracle recovers it with exactly the
items that gain, and the cascade's and the router's costs count every model call."""

from __future__ import annotations

import pytest

from benchmarks.routing.metrics import Point, apgr, best_under_share, cpt
from benchmarks.routing.strategies import (
    Answered,
    Outcome,
    Prices,
    cascade_points,
    random_points,
    routed_cascade_points,
    scored_points,
    single_model,
)
from router.config import CascadeConfig
from task_models.skills import Item

PRICES = Prices(small=1.0, large=10.0)


def _outcome(index: int, small_correct: bool, large_correct: bool, confidence: float = -0.1) -> Outcome:
    item = Item("skill", "task", 1, f"key{index}", f"prompt {index}", "answer")
    small = Answered("a", small_correct, 10, 2, "stop", confidence)
    large = Answered("a", large_correct, 10, 3, "stop", None)
    return Outcome(item, small, large)


@pytest.fixture
def outcomes() -> list[Outcome]:
    """40 % of the items gain from the large model (the small one is unsure on them), 50 % both
    get right, 10 % neither."""
    gain = [_outcome(index, False, True, confidence=-5.0) for index in range(40)]
    both = [_outcome(100 + index, True, True) for index in range(50)]
    neither = [_outcome(200 + index, False, False, confidence=-0.5) for index in range(10)]
    return gain + both + neither


def test_each_model_alone(outcomes):
    small, large = single_model(outcomes, PRICES, False), single_model(outcomes, PRICES, True)
    assert (small.accuracy, small.large_share, small.cost) == (0.5, 0.0, 12.0)
    assert (large.accuracy, large.large_share, large.cost) == (0.9, 1.0, 130.0)


def test_random_routing_has_an_apgr_of_one_half(outcomes):
    points = random_points(outcomes, PRICES)
    assert apgr(points, 0.5, 0.9) == pytest.approx(0.5)
    assert cpt(points, 0.5, 0.5, 0.9) == pytest.approx(0.5)
    assert cpt(points, 0.8, 0.5, 0.9) == pytest.approx(0.8)


def test_an_oracle_recovers_the_gap_with_the_items_that_gain(outcomes):
    scores = [float(outcome.gain) for outcome in outcomes]
    points = scored_points(outcomes, scores, PRICES)
    assert cpt(points, 1.0, 0.5, 0.9) == pytest.approx(0.4)
    assert cpt(points, 0.8, 0.5, 0.9) == pytest.approx(0.32)
    # The curve rises to the large model's accuracy at 40 % and stays there: area 1 - 0.4 / 2.
    assert apgr(points, 0.5, 0.9) == pytest.approx(0.8, abs=0.01)
    assert best_under_share(points, 0.4).accuracy == pytest.approx(0.9)


def test_a_router_that_prefers_the_wrong_items_is_below_random(outcomes):
    scores = [float(not outcome.gain) for outcome in outcomes]
    assert apgr(scored_points(outcomes, scores, PRICES), 0.5, 0.9) < 0.5


def test_the_cascade_pays_for_the_small_attempt_of_every_escalation(outcomes):
    points = {point.setting: point for point in cascade_points(outcomes, PRICES, None, False, grid=[-1.0])}
    point = points["min_confidence -1"]
    # The 40 unsure answers are escalated (and gain); the rest stay with the small model.
    assert point.large_share == pytest.approx(0.4) and point.accuracy == pytest.approx(0.9)
    assert point.cost == pytest.approx((100 * 12 + 40 * 130) / 100)


def test_a_router_in_front_of_the_cascade_sends_high_scores_straight_to_the_large_model(outcomes):
    scores = [1.0 if index < 20 else 0.0 for index in range(len(outcomes))]
    cascade = CascadeConfig(min_confidence=-1.0)
    points = routed_cascade_points(outcomes, scores, PRICES, cascade, None, shares=[0.2])
    # 20 straight to large (no small attempt), 20 more escalated by the cascade.
    assert points[0].large_share == pytest.approx(0.4) and points[0].accuracy == pytest.approx(0.9)
    assert points[0].cost == pytest.approx((20 * 130 + 80 * 12 + 20 * 130) / 100)


def test_cpt_interpolates_between_the_points_around_the_target():
    points = [Point("a", 0.0, 0.5, 1), Point("b", 0.2, 0.6, 2), Point("c", 0.4, 0.9, 3)]
    assert cpt(points, 0.5, 0.5, 0.9) == pytest.approx(0.2 + 0.2 * (0.7 - 0.6) / 0.3)
    assert cpt(points, 1.01, 0.5, 0.9) is None
