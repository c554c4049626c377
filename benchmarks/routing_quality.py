"""Routing quality, measured as RouteLLM measures it, on the two trained task models through the
real stack (predictors, transformers, the router's OpenAI edge):

    .venv/bin/python benchmarks/routing_quality.py                    # about 10 minutes on 2 cores

1. Both models answer every item of the held-out test suite and of the router split (separate
   questions, used to fit routers), each named by its model at the router's edge; the small one
   reports its tokens' logprobs (the cascade's confidence).
2. Routers are fitted on the router split: the learned policy from its labelled outcomes (with and
   without sentence embeddings), and again from the router's own decision log, written while the
   router served the router split with `model: auto`, its cascade and exploration on (weak labels:
   nobody labelled anything).
3. Every strategy is swept over the test suite's outcomes: each model alone, random routing, the
   rule policy, the cascade, each learned router, and the learned router in front of the cascade.
   Accuracy, share of large calls, cost (tokens x each model's price, the cascade's small attempts
   included), APGR and CPT(50 %)/CPT(80 %).
4. The shipped configuration (router/router.yaml as it is) serves the test suite live with
   `model: auto`; its figures are checked against the sweep's prediction for the same settings.
5. The routing decision's latency, per policy, over the test prompts and on a prompt at the
   router's body limit.

It writes summary.json, report.md, routing_quality.png, both models' answers to the test suite
(test_answers.jsonl) and the router split's labelled outcomes (router_outcomes.jsonl; with
--write_outcomes also to router/data/task_outcomes.jsonl, what the shipped learned router is fitted
on) under --out."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.routing.collect import MAX_TOKENS, Routed, ask_model, ask_router  # noqa: E402
from benchmarks.routing.metrics import Point, apgr, best_under_share, cpt  # noqa: E402
from benchmarks.routing.prompts import body_limit_text, pathological_prompts  # noqa: E402
from benchmarks.routing.strategies import (  # noqa: E402
    MIN_CONFIDENCE_GRID,
    SHARE_STEPS,
    Outcome,
    Prices,
    cascade_points,
    escalations,
    group_means,
    point_of,
    random_points,
    routed_cascade_points,
    scored_points,
    single_model,
)
from router.config import CascadeConfig, RouterConfig, load_config  # noqa: E402
from router.features import RoutingRequest  # noqa: E402
from router.learned_policy import LearnedPolicy, load_policy  # noqa: E402
from router.policy import RoutingPolicy  # noqa: E402
from router.text_features import DEFAULT_NUM_BUCKETS  # noqa: E402
from router.train import Example, fit, read_decision_log  # noqa: E402
from devstack.local_stack import (  # noqa: E402
    ROUTER_CONFIG,
    SIZES,
    TASK_MODELS,
    Ports,
    Stack,
    local_url,
    model_name,
    predictor,
    router,
    transformer,
    write_router_config,
)
from task_models.checkpoint import checkpoint_dir  # noqa: E402
from task_models.skills import Item, Split, held_out_items  # noqa: E402
from tests.serving.ports import free_port_block  # noqa: E402

ROUTER_PORT_OFFSET = 15
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "routing"
SHIPPED_OUTCOMES = REPO_ROOT / "router" / "data" / "task_outcomes.jsonl"
LATENCY_REPEATS = 3


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str
    points: list[Point]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--test_items", type=int, default=1600, help="held-out test items (balanced)")
    parser.add_argument("--router_items", type=int, default=3200, help="router-split items to fit routers on")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--small_price", type=float, default=None,
                        help="cost per token of the small model (unset: its parameters, in millions)")
    parser.add_argument("--large_price", type=float, default=None,
                        help="cost per token of the large model (unset: its parameters, in millions)")
    parser.add_argument("--explore_share", type=float, default=0.2,
                        help="the bootstrap router's exploration while it writes its decision log")
    parser.add_argument("--embeddings", action=argparse.BooleanOptionalAction, default=True,
                        help="also fit and measure the learned router with sentence embeddings")
    parser.add_argument("--write_outcomes", action="store_true",
                        help=f"also write the router split's labelled outcomes to {SHIPPED_OUTCOMES}")
    return parser.parse_args()


def parameters_in_millions(directory: Path) -> float:
    from safetensors import safe_open

    total = 0
    with safe_open(str(directory / "model.safetensors"), framework="numpy") as handle:
        for name in handle.keys():
            shape = handle.get_slice(name).get_shape()
            count = 1
            for size in shape:
                count *= size
            total += count
    return total / 1e6


# The stack -------------------------------------------------------------------------------------

def start_models(stack: ExitStack, ports: Ports, log_dir: Path) -> None:
    components = [*(transformer(size, ports, TASK_MODELS) for size in SIZES),
                  *(predictor(size, ports, models=TASK_MODELS) for size in SIZES)]
    servers = Stack(components, log_dir)
    stack.callback(servers.stop)
    servers.start()


def start_router(stack: ExitStack, ports: Ports, config: Path, log_dir: Path, name: str) -> str:
    servers = Stack([router(name, ports.router, config)], log_dir)
    servers.start()
    stack.callback(servers.stop)
    return local_url(ports.router)


def stop_router(stack: ExitStack) -> None:
    stack.close()


# Outcomes --------------------------------------------------------------------------------------

def collect_outcomes(url: str, items: list[Item]) -> list[Outcome]:
    small = asyncio.run(ask_model(url, model_name("small"), items, logprobs=True))
    large = asyncio.run(ask_model(url, model_name("large"), items, logprobs=False))
    return [Outcome(item, small_answer, large_answer) for item, small_answer, large_answer in zip(items, small, large)]


def write_outcomes(path: Path, outcomes: list[Outcome]) -> None:
    lines = [json.dumps({"prompt": outcome.item.prompt, "max_tokens": MAX_TOKENS,
                         "category": f"{outcome.item.skill}, level {outcome.item.level}",
                         "small_correct": outcome.small.correct, "large_correct": outcome.large.correct})
             for outcome in outcomes]
    path.write_text("\n".join(lines) + "\n")


def write_answers(path: Path, outcomes: list[Outcome]) -> None:
    """Every test item with both models' answers, for a closer look."""
    lines = [json.dumps({**outcome.item.as_dict(), "small": outcome.small.as_dict(), "large": outcome.large.as_dict()})
             for outcome in outcomes]
    path.write_text("\n".join(lines) + "\n")


def routing_request(item: Item) -> RoutingRequest:
    """What the router's edge sees of the benchmark's chat request."""
    return RoutingRequest(item.prompt, 1, MAX_TOKENS)


def examples_of(outcomes: list[Outcome]) -> list[Example]:
    return [Example(routing_request(outcome.item), None, outcome.gain, "outcomes") for outcome in outcomes]


def scores_of(policy: RoutingPolicy | LearnedPolicy, items: list[Item]) -> list[float]:
    return [policy.decide(routing_request(item)).score for item in items]


# Latency ---------------------------------------------------------------------------------------

def decision_latency_ms(policy: RoutingPolicy | LearnedPolicy, items: list[Item]) -> dict:
    """p50 and p99 of one decision over the test prompts (best of LATENCY_REPEATS passes), and the
    time to decide a prompt at the router's body limit."""
    requests = [routing_request(item) for item in items]
    for request in requests[:50]:
        policy.decide(request)
    passes = []
    for _ in range(LATENCY_REPEATS):
        timings = []
        for request in requests:
            started = time.perf_counter()
            policy.decide(request)
            timings.append((time.perf_counter() - started) * 1000)
        passes.append(sorted(timings))
    best = min(passes, key=lambda timings: statistics.median(timings))
    limit_prompt = RoutingRequest(body_limit_text(), 1, MAX_TOKENS)
    return {"p50_ms": round(statistics.median(best), 4), "p99_ms": round(best[int(0.99 * (len(best) - 1))], 4),
            "body_limit_prompt_ms": round(_decision_ms(policy, limit_prompt), 2),
            "body_limit_chars": len(limit_prompt.text),
            "pathological_prompt_ms": {name: round(_decision_ms(policy, RoutingRequest(text, 1, MAX_TOKENS)), 2)
                                       for name, text in pathological_prompts().items()}}


def _decision_ms(policy: RoutingPolicy | LearnedPolicy, request: RoutingRequest) -> float:
    started = time.perf_counter()
    policy.decide(request)
    return (time.perf_counter() - started) * 1000


# Report ----------------------------------------------------------------------------------------

def metrics_of(strategy: Strategy, small: Point, large: Point) -> dict:
    points = strategy.points
    under_40 = best_under_share(points, 0.40)
    return {
        "apgr": _rounded(apgr(points, small.accuracy, large.accuracy)),
        "cpt50": _rounded(cpt(points, 0.5, small.accuracy, large.accuracy)),
        "cpt80": _rounded(cpt(points, 0.8, small.accuracy, large.accuracy)),
        "best_at_most_40pct_large": asdict(under_40) if under_40 else None,
        "points": [asdict(point) for point in points],
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def markdown_report(summary: dict) -> str:
    small, large = summary["small"], summary["large"]
    lines = [
        f"Held-out test suite: {summary['test_items']} items; routers fitted on {summary['router_items']} router-split "
        f"items. Prices per token: small {summary['prices']['small']:g}, large {summary['prices']['large']:g}.",
        "",
        f"- small model alone: accuracy {_percent(small['accuracy'])}, cost {small['cost']:.1f} per request",
        f"- large model alone: accuracy {_percent(large['accuracy'])}, cost {large['cost']:.1f} per request",
        f"- the small model's answers cut at the 48-token limit: {summary['small_length_stops']}",
        "",
        "| strategy | APGR | CPT(50 %) | CPT(80 %) | best with <= 40 % large calls: accuracy (share of large's) | "
        "large calls | cost |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, metrics in summary["strategies"].items():
        best = metrics["best_at_most_40pct_large"]
        share_of_large = best["accuracy"] / large["accuracy"] if best else None
        lines.append(
            f"| {name} | {metrics['apgr'] if metrics['apgr'] is not None else '-'} | {_percent(metrics['cpt50'])} | "
            f"{_percent(metrics['cpt80'])} | "
            + (f"{_percent(best['accuracy'])} ({_percent(share_of_large)}) | {_percent(best['large_share'])} | "
               f"{best['cost']:.1f} |" if best else "- | - | - |"))
    live = summary["shipped_default_live"]
    lines += ["", f"Shipped configuration, live (`model: auto`, {live['policy']}, threshold {live['threshold']}, "
                  f"cascade min_confidence {live['min_confidence']}): accuracy {_percent(live['accuracy'])} "
                  f"({_percent(live['accuracy'] / large['accuracy'])} of the large model's), large calls "
                  f"{_percent(live['large_share'])}, escalations {_percent(live['escalated_share'])}, cost "
                  f"{live['cost']:.1f}; the sweep predicted accuracy {_percent(live['predicted_accuracy'])}, "
                  f"large calls "
                  f"{_percent(live['predicted_large_share'])}.",
              "", "| policy | decision p50 | p99 | prompt at the body limit |", "| --- | --- | --- | --- |"]
    for name, latency in summary["decision_latency"].items():
        lines.append(f"| {name} | {latency['p50_ms']:.3f} ms | {latency['p99_ms']:.3f} ms | "
                     f"{latency['body_limit_prompt_ms']:.1f} ms ({latency['body_limit_chars']:,} characters) |")
    lines += ["", "Decision time on pathological prompts:", ""]
    for name, latency in summary["decision_latency"].items():
        slowest = ", ".join(f"{prompt} {ms:.1f} ms" for prompt, ms in latency["pathological_prompt_ms"].items())
        lines.append(f"- {name}: {slowest}")
    lines += ["", "Learned router + cascade settings that keep >= 90 % of the large model's accuracy with <= 40 % "
                  "large calls, cheapest first:", "",
              "| calibrated share | min_confidence | accuracy | large calls | cost |",
              "| --- | --- | --- | --- | --- |"]
    for candidate in summary["default_candidates"]:
        lines.append(f"| {candidate['calibrated_share']:g} | {candidate['min_confidence']:g} | "
                     f"{_percent(candidate['accuracy'])} | {_percent(candidate['large_share'])} | "
                     f"{candidate['cost']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(strategies: list[Strategy], small: Point, large: Point, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_share, by_cost) = plt.subplots(1, 2, figsize=(14, 6))
    for strategy in strategies:
        ordered = sorted(strategy.points, key=lambda point: point.large_share)
        by_share.plot([100 * p.large_share for p in ordered], [100 * p.accuracy for p in ordered], marker=".",
                      label=strategy.name)
        by_cost_points = sorted(strategy.points, key=lambda point: point.cost)
        by_cost.plot([p.cost for p in by_cost_points], [100 * p.accuracy for p in by_cost_points], marker=".",
                     label=strategy.name)
    for axes, x_label in ((by_share, "calls to the large model (%)"), (by_cost, "cost per request")):
        axes.axhline(100 * small.accuracy, color="grey", linestyle="--", label="small model")
        axes.axhline(100 * large.accuracy, color="red", linestyle="--", label="large model")
        axes.set_xlabel(x_label)
        axes.set_ylabel("accuracy on the held-out suite (%)")
        axes.grid(alpha=0.3)
    by_share.set_title("Accuracy against large-model calls")
    by_cost.set_title("Accuracy against cost (cascade attempts included)")
    by_share.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


# Main ------------------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    test_items = held_out_items(Split.TEST, args.test_items)
    router_items = held_out_items(Split.ROUTER, args.router_items)
    params = {size: parameters_in_millions(checkpoint_dir(size)) for size in SIZES}
    prices = Prices(args.small_price if args.small_price is not None else params["small"],
                    args.large_price if args.large_price is not None else params["large"])
    shipped = load_config(ROUTER_CONFIG)
    base = free_port_block(30)
    ports = Ports(base=base, router=base + ROUTER_PORT_OFFSET)
    log_dir = Path(tempfile.mkdtemp(prefix="routing-quality-"))
    print(f"logs in {log_dir}", flush=True)
    decision_log = args.out / "decisions.jsonl"
    decision_log.unlink(missing_ok=True)
    with ExitStack() as models:
        start_models(models, ports, log_dir)
        bootstrap = write_router_config(
            log_dir / "bootstrap.yaml", ports, policy={"threshold": RoutingPolicy(0.5).threshold},
            cascade=shipped.cascade.model_dump(),
            learning={"decision_log": str(decision_log), "log_prompts": "redacted",
                      "explore_share": args.explore_share})
        with ExitStack() as bootstrap_router:
            url = start_router(bootstrap_router, ports, bootstrap, log_dir, "router-bootstrap")
            started = time.perf_counter()
            test = collect_outcomes(url, test_items)
            routed = collect_outcomes(url, router_items)
            print(f"outcomes: {len(test)} test and {len(routed)} router-split items, both models "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
            started = time.perf_counter()
            asyncio.run(ask_router(url, router_items))
            print(f"the bootstrap router served the router split ({time.perf_counter() - started:.0f} s)", flush=True)
        write_outcomes(args.out / "router_outcomes.jsonl", routed)
        write_answers(args.out / "test_answers.jsonl", test)
        if args.write_outcomes:
            write_outcomes(SHIPPED_OUTCOMES, routed)
        with ExitStack() as default_router:
            url = start_router(default_router, ports, write_router_config(log_dir / "shipped.yaml", ports), log_dir,
                               "router-shipped")
            live = asyncio.run(ask_router(url, test_items))
    summary = evaluate(args, test, routed, decision_log, live, prices, params, shipped)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    report = markdown_report(summary)
    (args.out / "report.md").write_text(report)
    print(report)
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'report.md'} and {args.out / 'routing_quality.png'}")


def evaluate(args: argparse.Namespace, test: list[Outcome], routed: list[Outcome], decision_log: Path,
             live: list[Routed], prices: Prices, params: dict, shipped) -> dict:
    items = [outcome.item for outcome in test]
    small, large = single_model(test, prices, False), single_model(test, prices, True)
    policies: dict[str, RoutingPolicy | LearnedPolicy] = {"rule policy": RoutingPolicy(0.5)}
    policies["learned (labelled outcomes)"] = LearnedPolicy(fit(examples_of(routed), log=_log), 0.5)
    if args.embeddings:
        policies["learned + embeddings"] = LearnedPolicy(fit(examples_of(routed), embeddings=True, log=_log), 0.5)
    weak, skipped = read_decision_log(decision_log, DEFAULT_NUM_BUCKETS)
    print(f"decision log: {len(weak)} weakly labelled requests ({dict(skipped)} skipped)", flush=True)
    policies["learned (own cascade log)"] = LearnedPolicy(fit(weak, log=_log), 0.5)
    scores = {name: scores_of(policy, items) for name, policy in policies.items()}
    cascade = CascadeConfig(**{**shipped.cascade.model_dump(), "enabled": True})
    strategies = [Strategy("random", random_points(test, prices)),
                  Strategy("oracle", scored_points(test, [float(outcome.gain) for outcome in test], prices)),
                  Strategy("cell oracle", scored_points(test, cell_gain_rates(test), prices))]
    strategies += [Strategy(name, scored_points(test, scores[name], prices)) for name in policies]
    strategies += [
        Strategy("cascade", cascade_points(test, prices, MAX_TOKENS, cascade.escalate_on_length)),
        # As if the 48-token limit were the server's, not the client's: what escalate_on_length changes.
        Strategy("cascade, length stops escalated", cascade_points(test, prices, None, True)),
        Strategy(f"learned + cascade (min_confidence {cascade.min_confidence:g})",
                 routed_cascade_points(test, scores["learned (labelled outcomes)"], prices, cascade, MAX_TOKENS)),
    ]
    plot([strategy for strategy in strategies if "length" not in strategy.name and strategy.name != "cell oracle"],
         small, large,
         args.out / "routing_quality.png")
    candidates = default_candidates(test, scores["learned (labelled outcomes)"], prices, large)
    shipped_policy = load_policy(shipped.policy)
    return {
        "test_items": len(test), "router_items": len(routed), "parameters_millions": params, "prices": asdict(prices),
        "small_length_stops": sum(outcome.small.finish_reason == "length" for outcome in test),
        "small": asdict(small), "large": asdict(large),
        "strategies": {strategy.name: metrics_of(strategy, small, large) for strategy in strategies},
        "shipped_default_live": live_figures(live, test, prices, shipped_policy, shipped, cascade),
        "decision_latency": {name: decision_latency_ms(policy, items) for name, policy in policies.items()},
        "default_candidates": candidates,
    }


def cell_gain_rates(test: list[Outcome]) -> list[float]:
    """Each item's score as the share of its task-and-level cell that gains from the large model,
    measured on the test suite itself: the best a router that reads only the cell can do."""
    return group_means(test, lambda outcome: (outcome.item.task, outcome.item.level), lambda outcome: outcome.gain)


def default_candidates(test: list[Outcome], scores: list[float], prices: Prices, large: Point,
                       max_large_share: float = 0.40, kept_share: float = 0.90) -> list[dict]:
    """Settings of the learned router in front of the cascade (a share of large calls to calibrate
    for, and a min_confidence) that keep `kept_share` of the large model's accuracy with at most
    `max_large_share` large calls, cheapest first: what to ship."""
    found = []
    for min_confidence in MIN_CONFIDENCE_GRID:
        cascade = CascadeConfig(min_confidence=min_confidence)
        for share, point in zip(SHARE_STEPS, routed_cascade_points(test, scores, prices, cascade, MAX_TOKENS)):
            if point.accuracy >= kept_share * large.accuracy and point.large_share <= max_large_share:
                found.append({"calibrated_share": share, "min_confidence": min_confidence, **asdict(point)})
    return sorted(found, key=lambda candidate: candidate["cost"])[:10]


def live_figures(live: list[Routed], test: list[Outcome], prices: Prices, policy: RoutingPolicy | LearnedPolicy,
                 shipped: RouterConfig, cascade: CascadeConfig) -> dict:
    """What the shipped configuration did live, and what the sweep predicts for its settings. A
    live escalation's cost counts the small model's attempt from the outcomes (the same greedy
    answer: the client sees only the large one's usage)."""
    cost = 0.0
    for routed, outcome in zip(live, test):
        price = prices.large if routed.route == "large" else prices.small
        cost += routed.answer.tokens * price + (outcome.small.tokens * prices.small if routed.escalated else 0)
    scores = scores_of(policy, [outcome.item for outcome in test])
    to_large = [score >= shipped.policy.threshold for score in scores]
    escalated = escalations(test, cascade, MAX_TOKENS) if shipped.cascade.enabled else [False] * len(test)
    predicted = _predicted(test, prices, to_large, escalated)
    return {
        "policy": f"learned ({shipped.policy.learned_model.name})" if shipped.policy.learned_model else "rule policy",
        "threshold": shipped.policy.threshold, "min_confidence": shipped.cascade.min_confidence,
        "accuracy": sum(routed.answer.correct for routed in live) / len(live),
        "large_share": sum(routed.route == "large" for routed in live) / len(live),
        "escalated_share": sum(routed.escalated is not None for routed in live) / len(live),
        "cost": cost / len(live),
        "predicted_accuracy": predicted.accuracy, "predicted_large_share": predicted.large_share,
    }


def _predicted(test: list[Outcome], prices: Prices, to_large: list[bool], escalated: list[bool]) -> Point:
    return point_of("shipped", test, prices, to_large, [not direct and up for direct, up in zip(to_large, escalated)])


def _log(message: str) -> None:
    print(message, flush=True)


if __name__ == "__main__":
    main()
