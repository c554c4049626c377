"""benchmarks/real_routing.py's analysis and its report (benchmarks/routing/real_report.py) on
synthetic outcomes (no model runs): the split is stratified and fixed by its seed, routing by
category sends each category to the model better on it, the oracles are what they claim, cached
answers come back graded again, and the report says in numbers whether any routing beats always
asking the better model."""

from __future__ import annotations

import json

import pytest

from benchmarks.real_routing import (
    ANSWERS_FILE,
    LABELS,
    MODELS,
    answer_record,
    by_group,
    evaluate,
    item_oracle,
    read_answers,
    sign_test,
    split,
)
from benchmarks.routing.real_report import markdown_report
from benchmarks.routing.strategies import Answered, Outcome, Prices
from benchmarks.routing.suites import QA_STOP, SuiteItem

PRICES = Prices(small=134.5, large=268.1)
# Fewer hashed features than the router's: the learned router fits in a second.
NUM_BUCKETS = 512
# Per category: (items, how many of them each model gets right, of which both).
ACCURACY = {"arithmetic": (40, 10, 30, 8), "facts": (40, 32, 12, 10), "instructions": (40, 24, 8, 6)}


def _item(category: str, index: int) -> SuiteItem:
    task = f"{category}-{index % 2}"
    prompt = {"arithmetic": f"12 + 30 = 42\n{index} + {index + 3} =",
              "facts": f"Q: What is the capital of country {index}?\nA:",
              "instructions": f"Q: Write the word word{index} in capital letters.\nA:"}[category]
    return SuiteItem(category, task, f"{task}:{index}", prompt, "right", QA_STOP, 32,
                     lambda text: text.strip() == "right")


def _answer(correct: bool, confidence: float) -> Answered:
    return Answered(" right" if correct else " wrong", correct, 30, 3, "stop", confidence)


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    """Arithmetic: the large model far better; facts and instructions: the small one. The small
    model is unsure where it is wrong on arithmetic."""
    made = []
    for category, (count, small_right, large_right, both) in ACCURACY.items():
        for index in range(count):
            small = index < small_right
            large = index < both or small_right <= index < small_right + large_right - both
            made.append(Outcome(_item(category, index), _answer(small, -0.2 if small else -4.0), _answer(large, -0.5)))
    return made


def test_the_split_takes_a_share_of_each_task_and_is_fixed_by_its_seed(outcomes):
    fit, test = split(outcomes, 0.5, seed=0)
    assert len(fit) == len(test) == len(outcomes) // 2
    assert {outcome.item.key for outcome in fit}.isdisjoint(outcome.item.key for outcome in test)
    for task in {outcome.item.task for outcome in outcomes}:
        assert sum(outcome.item.task == task for outcome in fit) == 10
    assert split(outcomes, 0.5, seed=0) == (fit, test)
    assert split(outcomes, 0.5, seed=1) != (fit, test)


def test_routing_by_category_sends_each_category_to_the_model_better_on_it(outcomes):
    fit, test = split(outcomes, 0.5)
    strategy = by_group("by category", test, fit, "category", fit)
    to_large = {outcome.item.category: large for outcome, large in zip(test, strategy.chosen.to_large)}
    assert to_large == {"arithmetic": True, "facts": False, "instructions": False}
    point = strategy.chosen.point(test, PRICES)
    right = sum(outcome.large.correct if outcome.item.category == "arithmetic" else outcome.small.correct
                for outcome in test)
    assert point.accuracy == pytest.approx(right / len(test))
    assert point.large_share == pytest.approx(1 / 3)
    # Its curve sends the categories to the large model in order of its advantage there.
    shares = sorted({round(routing.point(test, PRICES).large_share, 4) for routing in strategy.curve})
    assert shares == [0.0, 0.3333, 0.6667, 1.0]


def test_the_item_oracle_is_right_wherever_either_model_is(outcomes):
    point = item_oracle(outcomes).chosen.point(outcomes, PRICES)
    either = sum(outcome.small.correct or outcome.large.correct for outcome in outcomes)
    assert point.accuracy == pytest.approx(either / len(outcomes))
    assert point.large_share == pytest.approx(sum(outcome.gain for outcome in outcomes) / len(outcomes))


def test_the_sign_test():
    assert sign_test(0, 0) == 1.0
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(3, 3) == 1.0


def test_cached_answers_come_back_graded_again_unless_their_item_changed(outcomes, tmp_path):
    path = tmp_path / ANSWERS_FILE
    items = [outcome.item for outcome in outcomes[:3]]
    records = [answer_record("model", item, Answered(" right", False, 5, 1, "stop", -0.1)) for item in items]
    records[2]["prompt"] = "an older prompt"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    answers = read_answers(path, items)
    assert set(answers) == {("model", items[0].key), ("model", items[1].key)}
    assert answers["model", items[0].key] == Answered(" right", True, 5, 1, "stop", -0.1)


def test_the_analysis_reports_every_strategy_and_reads_the_numbers(outcomes):
    fit, test = split(outcomes, 0.5)
    summary = evaluate(outcomes, fit, test, PRICES, NUM_BUCKETS, log=lambda message: None)
    assert summary["better_model"] == "small" and summary["skipped"] == {}
    strategies = summary["strategies"]
    assert {f"{LABELS[role]} alone" for role in MODELS} | {"rule policy", "learned router", "cascade",
                                                           "by category (fitting split)",
                                                           "item oracle (ceiling)"} <= set(strategies)
    small = strategies[f"{LABELS['small']} alone"]["chosen"]["accuracy"]
    by_category = strategies["by category (fitting split)"]
    assert by_category["chosen"]["accuracy"] > small
    assert by_category["vs_better_model"]["won"] > by_category["vs_better_model"]["lost"]
    # The large model is the less accurate one: no gap for APGR and CPT to measure.
    assert strategies["cascade"]["apgr"] is None and summary["random"]["apgr"] is None
    rows = {row["category"]: row for row in summary["categories"]}
    assert rows["arithmetic"]["better_on_fit"] == "large" and rows["facts"]["better_on_fit"] == "small"
    assert rows["all"]["test_items"] == len(test)

    report = markdown_report(summary)
    assert "## Each model per category (test split)" in report and "| arithmetic | 20 |" in report
    assert "by category (fitting split) beats always asking SmolLM2-135M-Instruct" in report
    assert "APGR and CPT are not defined here" in report


def test_the_report_says_so_when_no_routing_beats_the_better_model(outcomes):
    """Both models equally good on every category, the large one right on the same items."""
    same = [Outcome(outcome.item, outcome.small, outcome.small) for outcome in outcomes]
    fit, test = split(same, 0.5)
    summary = evaluate(same, fit, test, PRICES, NUM_BUCKETS, log=lambda message: None)
    assert "learned router" in summary["skipped"]
    assert "No routing beats always asking SmolLM2-135M-Instruct" in markdown_report(summary)
