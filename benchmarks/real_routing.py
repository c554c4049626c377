"""Routing quality on a real pair of small language models, per category, as RouteLLM measures it:
SmolLM2-135M-Instruct is `small`, Gemma 3 270M (base) is `large`, on checkable suites where they
differ (benchmarks/routing/suites.py: arithmetic, facts, short Python functions, instructions):

    .venv/bin/python benchmarks/real_routing.py           # about 6 minutes on 2 cores
    .venv/bin/python benchmarks/real_routing.py --reuse   # the analysis alone, on the cached answers: 30 s

1. Both models answer every item through our engine, offline (benchmarks/routing/engine_answers.py).
   The answers go to answers.jsonl under --out; --reuse reads them back (graded again, so a
   checker's fix counts) and generates only the items they lack.
2. The items are split, stratified by task, into a fitting split (routers are fitted and their
   settings chosen on it) and a test split (every figure is measured on it).
3. On the test split: each model alone, random routing, the rule policy, the cascade, the learned
   router (router.train's fit on the fitting split's labelled outcomes), the learned router in
   front of the cascade, routing by category and by task (each to the model more accurate on it
   in the fitting split), the per-category oracle (the same, knowing the test split) and the
   item-level oracle (the ceiling). A router with a setting is reported at the one most accurate
   on the fitting split, at the cheapest one there that is as accurate as the better model alone,
   and at its best on the test split (in hindsight: optimistic). Accuracy, share
   of large calls, cost (tokens x price, the price proportional to the parameters each token
   multiplies), APGR, CPT(50 %), CPT(80 %), and the difference to always asking the model more
   accurate on the test split: items won and lost, and a two-sided sign test.

It writes answers.jsonl, summary.json and report.md under --out."""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.routing.metrics import Point, apgr, cpt  # noqa: E402
from benchmarks.routing.real_report import markdown_report  # noqa: E402
from benchmarks.routing.strategies import (  # noqa: E402
    MIN_CONFIDENCE_GRID,
    Answered,
    Outcome,
    Prices,
    Routing,
    cascade_routings,
    group_means,
    random_points,
    routed_cascade_routings,
    scored_routings,
)
from benchmarks.routing.suites import SuiteItem, suite  # noqa: E402
from router.config import CascadeConfig  # noqa: E402
from router.features import RoutingRequest  # noqa: E402
from router.learned_policy import LearnedPolicy  # noqa: E402
from router.policy import RoutingPolicy  # noqa: E402
from router.text_features import DEFAULT_NUM_BUCKETS  # noqa: E402
from router.train import Example, TrainingError, fit  # noqa: E402

MODELS = {"small": "smollm2-135m-instruct", "large": "gemma-3-270m"}
LABELS = {"small": "SmolLM2-135M-Instruct", "large": "Gemma 3 270M"}
# Parameters each token multiplies (the embedding lookup is no matmul; a tied output head is one),
# in millions: the price per token of each model.
MATMUL_PARAMS_MILLIONS = {"small": 134.5, "large": 268.1}
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "real_routing"
ANSWERS_FILE = "answers.jsonl"
FIT_SHARE = 0.5
SPLIT_SEED = 0
CLIENT_MAX_TOKENS = None  # each item's max_tokens is its client's: a length stop is judged on confidence alone


@dataclass(frozen=True, slots=True)
class Strategy:
    """A strategy on the test split: its routings over its settings (the curve APGR and CPT read)
    and the one it is reported at; for a router, the same settings on the fitting split, where
    the cheapest one to match the better model is chosen. `kind`: model (one model alone), router
    (what the router can do), oracle (knows the answers)."""

    name: str
    kind: str
    curve: list[Routing]
    chosen: Routing
    how_chosen: str
    fit_curve: list[Routing] | None = None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--reuse", action="store_true",
                        help=f"read the models' answers from --out/{ANSWERS_FILE}; generate only those it lacks")
    parser.add_argument("--fit_share", type=float, default=FIT_SHARE, help="share of each task in the fitting split")
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="seed of the split")
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads of the engine (unset: torch's)")
    parser.add_argument("--num_buckets", type=int, default=DEFAULT_NUM_BUCKETS,
                        help="hashed text features of the learned router (router.train's)")
    return parser.parse_args()


def _log(message: str) -> None:
    print(message, flush=True)


# Answers ---------------------------------------------------------------------------------------

def answer_record(model: str, item: SuiteItem, answer: Answered) -> dict:
    return {"model": model, "key": item.key, "category": item.category, "task": item.task, "prompt": item.prompt,
            "stop": list(item.stop), "max_tokens": item.max_tokens, **answer.as_dict()}


def read_answers(path: Path, items: Sequence[SuiteItem]) -> dict[tuple[str, str], Answered]:
    """The cached answers that still fit their item (same prompt, stop strings and max_tokens),
    by (model, key), graded again."""
    by_key = {item.key: item for item in items}
    answers = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        item = by_key.get(record["key"])
        if item is None or (record["prompt"], tuple(record["stop"]), record["max_tokens"]) != (
                item.prompt, item.stop, item.max_tokens):
            continue
        answers[record["model"], item.key] = Answered(
            record["text"], item.is_correct(record["text"]), record["prompt_tokens"], record["completion_tokens"],
            record["finish_reason"], record["confidence"])
    return answers


def collect(items: list[SuiteItem], out: Path, reuse: bool, num_threads: int | None) -> tuple[list[Outcome], dict]:
    """Both models' answers to every item, and for each model how many it generated, in how many
    seconds."""
    from benchmarks.routing.engine_answers import answer_items

    path = out / ANSWERS_FILE
    cached = read_answers(path, items) if reuse and path.exists() else {}
    answers: dict[str, dict[str, Answered]] = {}
    generation = {}
    for role, model in MODELS.items():
        known = {item.key: cached[model, item.key] for item in items if (model, item.key) in cached}
        missing = [item for item in items if item.key not in known]
        started = time.perf_counter()
        if missing:
            known.update(zip((item.key for item in missing), answer_items(model, missing, num_threads, _log)))
        generation[role] = {"generated": len(missing), "seconds": round(time.perf_counter() - started, 1)}
        _log(f"{model}: {len(items) - len(missing)} answers reused, {len(missing)} generated")
        answers[role] = known
    path.write_text("".join(json.dumps(answer_record(MODELS[role], item, answers[role][item.key])) + "\n"
                            for role in MODELS for item in items))
    return [Outcome(item, answers["small"][item.key], answers["large"][item.key]) for item in items], generation


# Split -----------------------------------------------------------------------------------------

def split(outcomes: Sequence[Outcome], fit_share: float = FIT_SHARE,
          seed: int = SPLIT_SEED) -> tuple[list[Outcome], list[Outcome]]:
    """(fitting split, test split): `fit_share` of each task's items, drawn with `seed`, in the
    fitting split; both keep the suite's order."""
    by_task: dict[str, list[str]] = {}
    for outcome in outcomes:
        by_task.setdefault(outcome.item.task, []).append(outcome.item.key)
    fitting = set()
    for task, keys in sorted(by_task.items()):
        fitting.update(random.Random(f"{seed}:{task}").sample(keys, round(fit_share * len(keys))))
    return ([outcome for outcome in outcomes if outcome.item.key in fitting],
            [outcome for outcome in outcomes if outcome.item.key not in fitting])


# Strategies ------------------------------------------------------------------------------------

def routing_request(item: SuiteItem) -> RoutingRequest:
    """What the router's edge sees of the completion request."""
    return RoutingRequest(item.prompt, 1, item.max_tokens)


def _scores(policy: RoutingPolicy | LearnedPolicy, outcomes: Sequence[Outcome]) -> list[float]:
    return [policy.decide(routing_request(outcome.item)).score for outcome in outcomes]


def _best(points: Sequence[Point]) -> int:
    """The index of the most accurate point (the cheaper of equals)."""
    return max(range(len(points)), key=lambda index: (points[index].accuracy, -points[index].cost))


def _constant(setting: str, count: int, large: bool) -> Routing:
    return Routing(setting, [large] * count, [False] * count)


def alone(role: str, count: int) -> Strategy:
    routing = _constant(role, count, role == "large")
    return Strategy(f"{LABELS[role]} alone", "model", [routing], routing, "-")


def tuned(name: str, fit: Sequence[Outcome], test: Sequence[Outcome], prices: Prices,
          routings_of: Callable[[Sequence[Outcome], str], list[Routing]]) -> Strategy:
    """A router with a setting, swept over the same settings on both splits
    (`routings_of(outcomes, split name)`), reported at the setting most accurate on the fitting split."""
    on_fit = routings_of(fit, "fit")
    index = _best([routing.point(fit, prices) for routing in on_fit])
    curve = routings_of(test, "test")
    return Strategy(name, "router", curve, curve[index], f"best on the fitting split: {on_fit[index].setting}",
                    on_fit)


def group_advantage(outcomes: Sequence[Outcome], measured_on: Sequence[Outcome], group: str) -> list[float]:
    """Each outcome's score in [0, 1]: how much more often the large model than the small one is
    right on its group (`category` or `task`) in `measured_on`, mapped from [-1, 1]."""
    means = group_means(outcomes, lambda outcome: getattr(outcome.item, group),
                        lambda outcome: outcome.large_advantage, measured_on)
    return [(mean + 1) / 2 for mean in means]


def by_group(name: str, test: Sequence[Outcome], measured_on: Sequence[Outcome], group: str,
             fit: Sequence[Outcome] | None = None) -> Strategy:
    """Each group to the model more accurate on it in `measured_on` (the small one on a tie); its
    curve sends the groups to the large model in order of that advantage. A router when the
    advantage is measured on the fitting split `fit`, an oracle when on the test split itself."""
    scores = group_advantage(test, measured_on, group)
    chosen = Routing(f"each {group} to its better model", [score > 0.5 for score in scores], [False] * len(test))
    fit_curve = None if fit is None else scored_routings(group_advantage(fit, fit, group))
    return Strategy(name, "oracle" if fit is None else "router", scored_routings(scores), chosen,
                    f"each {group} to the model better on it", fit_curve)


def item_oracle(test: Sequence[Outcome]) -> Strategy:
    gains = [outcome.gain for outcome in test]
    chosen = Routing("the large model where only it is right", gains, [False] * len(test))
    return Strategy("item oracle (ceiling)", "oracle", scored_routings([float(gain) for gain in gains]), chosen,
                    "the large model exactly where only it is right")


def fit_learned(fit_outcomes: Sequence[Outcome], num_buckets: int, log: Callable[[str], None]) -> LearnedPolicy:
    """The learned router fitted on the fitting split's outcomes, labelled as router.train labels
    them: the gain (the large model right where the small one is wrong)."""
    examples = [Example(routing_request(outcome.item), None, outcome.gain, "outcomes") for outcome in fit_outcomes]
    return LearnedPolicy(fit(examples, num_buckets, log=log), 0.5)


def cascade_floor(fit: Sequence[Outcome], prices: Prices) -> CascadeConfig:
    """The cascade at the min_confidence most accurate on the fitting split."""
    points = [routing.point(fit, prices) for routing in cascade_routings(fit, CLIENT_MAX_TOKENS, False)]
    return CascadeConfig(min_confidence=MIN_CONFIDENCE_GRID[_best(points)])


def strategies(fit: list[Outcome], test: list[Outcome], prices: Prices, num_buckets: int = DEFAULT_NUM_BUCKETS,
               log: Callable[[str], None] = _log) -> tuple[list[Strategy], dict[str, str]]:
    """Every strategy on the test split, and those left out with the reason."""
    rules = RoutingPolicy(0.5)
    found = [alone("small", len(test)), alone("large", len(test)),
             tuned("rule policy", fit, test, prices, lambda outcomes, _: scored_routings(_scores(rules, outcomes)))]
    skipped = {}
    learned: dict[str, list[float]] = {}
    try:
        policy = fit_learned(fit, num_buckets, log)
        learned = {"fit": _scores(policy, fit), "test": _scores(policy, test)}
    except TrainingError as error:
        skipped["learned router"] = skipped["learned + cascade"] = str(error)
    if learned:
        found.append(tuned("learned router", fit, test, prices, lambda _, name: scored_routings(learned[name])))
    found.append(tuned("cascade", fit, test, prices,
                       lambda outcomes, _: cascade_routings(outcomes, CLIENT_MAX_TOKENS, False)))
    if learned:
        cascade = cascade_floor(fit, prices)
        found.append(tuned(f"learned + cascade (min_confidence {cascade.min_confidence:g})", fit, test, prices,
                           lambda outcomes, name: routed_cascade_routings(outcomes, learned[name], cascade,
                                                                          CLIENT_MAX_TOKENS)))
    found += [by_group("by category (fitting split)", test, fit, "category", fit),
              by_group("by task (fitting split)", test, fit, "task", fit),
              by_group("per-category oracle (knows the test split)", test, test, "category"),
              item_oracle(test)]
    return found, skipped


# Figures ---------------------------------------------------------------------------------------

def sign_test(won: int, lost: int) -> float:
    """Two-sided p-value of `won` against `lost` if either were equally likely (ties dropped)."""
    count = won + lost
    if count == 0:
        return 1.0
    tail = sum(math.comb(count, k) for k in range(min(won, lost) + 1)) / 2 ** count
    return min(1.0, 2 * tail)


def compared(correct: Sequence[bool], reference: Sequence[bool]) -> dict:
    """Items right where the reference is wrong (won) and wrong where it is right (lost)."""
    won = sum(mine and not theirs for mine, theirs in zip(correct, reference))
    lost = sum(theirs and not mine for mine, theirs in zip(correct, reference))
    return {"won": won, "lost": lost, "sign_test_p": round(sign_test(won, lost), 4)}


def accuracy_by(outcomes: Sequence[Outcome], correct: Sequence[bool], group: str) -> dict[str, float]:
    cells: dict[str, list[bool]] = {}
    for outcome, right in zip(outcomes, correct):
        cells.setdefault(getattr(outcome.item, group), []).append(right)
    return {name: sum(values) / len(values) for name, values in cells.items()}


def model_rows(outcomes: Sequence[Outcome], fit: Sequence[Outcome], test: Sequence[Outcome],
               group: str) -> list[dict]:
    """Each model per group (`category` or `task`, then all of them) on the test split and on the
    whole suite, and which is the more accurate on the fitting split."""
    rows = []
    for name in [*dict.fromkeys(getattr(outcome.item, group) for outcome in outcomes), "all"]:
        def member(outcome: Outcome) -> bool:
            return name == "all" or getattr(outcome.item, group) == name

        on_test = [outcome for outcome in test if member(outcome)]
        everywhere = [outcome for outcome in outcomes if member(outcome)]
        advantage = sum(outcome.large_advantage for outcome in fit if member(outcome))
        rows.append({
            group: name, "test_items": len(on_test), "items": len(everywhere),
            "small": _share(on_test, lambda outcome: outcome.small.correct),
            "large": _share(on_test, lambda outcome: outcome.large.correct),
            "only_small": sum(outcome.large_advantage < 0 for outcome in on_test),
            "only_large": sum(outcome.large_advantage > 0 for outcome in on_test),
            "both": sum(outcome.small.correct and outcome.large.correct for outcome in on_test),
            "small_all_items": _share(everywhere, lambda outcome: outcome.small.correct),
            "large_all_items": _share(everywhere, lambda outcome: outcome.large.correct),
            "better_on_fit": "large" if advantage > 0 else "small" if advantage < 0 else "tie",
        })
    return rows


def _share(outcomes: Sequence[Outcome], predicate: Callable[[Outcome], bool]) -> float | None:
    return sum(map(predicate, outcomes)) / len(outcomes) if outcomes else None


@dataclass(frozen=True, slots=True)
class Reference:
    """Always asking the model more accurate on the test split: which of its answers there are
    right; and what a router set on the fitting split must match there (the better model's
    accuracy on that split)."""

    correct: list[bool]
    fit_accuracy: float


def strategy_figures(strategy: Strategy, fit: Sequence[Outcome], test: Sequence[Outcome], prices: Prices,
                     small: Point, large: Point, reference: Reference) -> dict:
    points = [routing.point(test, prices) for routing in strategy.curve]
    chosen = strategy.chosen.point(test, prices)
    correct = strategy.chosen.correct(test)
    return {"kind": strategy.kind, "how_chosen": strategy.how_chosen, "chosen": asdict(chosen),
            "best_in_hindsight": asdict(max([chosen, *points], key=lambda point: (point.accuracy, -point.cost))),
            **gap_metrics(points, small, large),
            "vs_better_model": compared(correct, reference.correct),
            "accuracy_by_category": accuracy_by(test, correct, "category"),
            "cheapest_matching": cheapest_matching(strategy, fit, test, prices, reference),
            "points": [asdict(point) for point in points]}


def cheapest_matching(strategy: Strategy, fit: Sequence[Outcome], test: Sequence[Outcome], prices: Prices,
                      reference: Reference) -> dict | None:
    """A router at its setting cheapest on the fitting split among those at least as accurate
    there as the better model, measured on the test split (None for a strategy without settings
    on the fitting split, or with none that good)."""
    if strategy.fit_curve is None:
        return None
    on_fit = [routing.point(fit, prices) for routing in strategy.fit_curve]
    matching = [index for index, point in enumerate(on_fit) if point.accuracy >= reference.fit_accuracy]
    if not matching:
        return None
    index = min(matching, key=lambda index: (on_fit[index].cost, -on_fit[index].accuracy))
    routing = strategy.curve[index]
    return {"setting_on_fit": strategy.fit_curve[index].setting, "point": asdict(routing.point(test, prices)),
            "vs_better_model": compared(routing.correct(test), reference.correct)}


def gap_metrics(points: Sequence[Point], small: Point, large: Point) -> dict:
    """APGR and CPT, defined when the large model is the more accurate and the curve spans shares."""
    if large.accuracy <= small.accuracy or len(points) < 2:
        return {"apgr": None, "cpt50": None, "cpt80": None}
    return {"apgr": _rounded(apgr(points, small.accuracy, large.accuracy)),
            "cpt50": _rounded(cpt(points, 0.5, small.accuracy, large.accuracy)),
            "cpt80": _rounded(cpt(points, 0.8, small.accuracy, large.accuracy))}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def evaluate(outcomes: list[Outcome], fit: list[Outcome], test: list[Outcome], prices: Prices,
             num_buckets: int = DEFAULT_NUM_BUCKETS, log: Callable[[str], None] = _log) -> dict:
    """Every figure of the report, measured on the test split."""
    found, skipped = strategies(fit, test, prices, num_buckets, log)
    small, large = (_constant(role, len(test), role == "large").point(test, prices) for role in ("small", "large"))
    better = "large" if large.accuracy > small.accuracy else "small"
    fit_accuracy = max(_constant(role, len(fit), role == "large").point(fit, prices).accuracy for role in MODELS)
    reference = Reference(_constant(better, len(test), better == "large").correct(test), fit_accuracy)
    return {
        "models": {role: {"name": MODELS[role], "label": LABELS[role]} for role in MODELS},
        "prices": asdict(prices),
        "items": {"suite": len(outcomes), "fit": len(fit), "test": len(test)},
        "better_model": better,
        "categories": model_rows(outcomes, fit, test, "category"),
        "tasks": model_rows(outcomes, fit, test, "task"),
        "strategies": {strategy.name: strategy_figures(strategy, fit, test, prices, small, large, reference)
                       for strategy in found},
        "random": gap_metrics(random_points(test, prices), small, large),
        "skipped": skipped,
        "length_stops": {role: sum(getattr(outcome, role).finish_reason == "length" for outcome in test)
                         for role in MODELS},
    }


# Main ------------------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    items = suite()
    outcomes, generation = collect(items, args.out, args.reuse, args.num_threads)
    fit, test = split(outcomes, args.fit_share, args.seed)
    prices = Prices(MATMUL_PARAMS_MILLIONS["small"], MATMUL_PARAMS_MILLIONS["large"])
    summary = evaluate(outcomes, fit, test, prices, args.num_buckets)
    summary["split"] = {"fit_share": args.fit_share, "seed": args.seed}
    summary["run"] = {"generation": generation, "seconds": round(time.perf_counter() - started, 1),
                      "answers_file": ANSWERS_FILE}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    report = markdown_report(summary)
    (args.out / "report.md").write_text(report)
    print(report)
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'report.md'} and {args.out / ANSWERS_FILE}")


if __name__ == "__main__":
    main()
