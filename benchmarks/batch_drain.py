"""Peak shaving: does the router's batch queue use only spare capacity? One run, against the small
demo model's stack (predictor, transformer, router with the batch API, as serve_load starts it):

  (a) peak: the stack's completion tokens/s with --online_clients concurrent streaming clients;
  (b) batch alone: a batch of --batch_lines completions drains at completion tokens /
      (completed_at - in_progress_at), as a fraction of (a) (the bar: >= 80 %);
  (c) online alone: Poisson arrivals at --utilisation of (a)'s request rate, TTFT p50/p99;
  (d) online + batch: the same online load while a batch larger than it can drain runs; TTFT
      p50/p99 as a ratio to (c) (the bar: p99 at most 1.20), and the batch lines done meanwhile.

Every phase runs --rounds times, the four in turn, so that the machine's other load hits the
baselines (a, c) and what is compared with them (b, d) alike. The bars are judged on the median
of the rounds' ratios, each of a phase against the baseline run just before it (on a shared
machine the load changes between rounds more than between neighbouring phases); the pooled row
(TTFT percentiles over all rounds' samples, throughputs as all tokens over all seconds) is shown
beside them. Online requests stream through the router's
OpenAI edge (`model: "auto"`); batch lines are the same shape (fixed prompt and output lengths,
greedy, ignore_eos), each phase on fresh prompts. The router's batch flags are this run's
policy: --router_arg passes any of them (`--router_arg=--batch_concurrency=32`).

    .venv/bin/python benchmarks/batch_drain.py --json batch_drain.json
    .venv/bin/python benchmarks/batch_drain.py --rounds 1 --batch_lines 300 --online_requests 120  # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx

from benchmarks.load.clients import ROUTER, Clients, Endpoints
from benchmarks.load.metrics import SLO, Sample, percentile, summarise
from benchmarks.load.report import write_json
from benchmarks.load.workload import Request, RequestSource, WorkloadSpec
from runtime.demo import build_demo_model
from transformer.tokenizer import TextTokenizer

BATCHES = "/openai/v1/batches"
FILES = "/openai/v1/files"
POLL_SECONDS = 0.25
# How long (d)'s batch runs before the online load starts: its first claims and prefills are done.
BATCH_RAMP_SECONDS = 2.0
# (d)'s batch holds this many times the lines the stack could finish during the online load at
# its peak rate, so that it is still draining when the online load ends.
BATCH_OVERSIZE = 1.5
# (d): requests sent this soon after the online load starts meet the batch at full concurrency.
ONSET_SECONDS = 2.0
TTFT_P99_BAR = 1.20
DRAIN_BAR = 0.80
# The goodput SLO is not what this benchmark judges; summarise() needs one.
UNJUDGED = SLO(math.inf, math.inf)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--online_clients", type=int, default=32, help="(a): concurrent streaming clients")
    parser.add_argument("--peak_requests", type=int, default=384, help="(a): requests per round")
    parser.add_argument("--batch_lines", type=int, default=1500, help="(b): lines of the batch per round")
    parser.add_argument("--utilisation", type=float, default=0.4,
                        help="(c, d): the Poisson rate as a fraction of (a)'s request rate")
    parser.add_argument("--online_requests", type=int, default=400, help="(c, d): online requests per round")
    parser.add_argument("--prompt_tokens", type=int, default=64)
    parser.add_argument("--output_tokens", type=int, default=32, help="max_tokens of every request and line")
    parser.add_argument("--rounds", type=int, default=3, help="times each phase runs, the four in turn")
    parser.add_argument("--router_arg", action="append", default=[],
                        help="a flag for the router (repeat it), e.g. --router_arg=--batch_concurrency=32")
    parser.add_argument("--num_threads", type=int, default=1, help="torch threads of the predictor")
    parser.add_argument("--phase_timeout", type=float, default=300.0, help="seconds before a phase gives up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the whole report here")
    return parser


@dataclass(frozen=True, slots=True)
class Run:
    endpoints: Endpoints
    http: httpx.AsyncClient
    clients: Clients
    source: RequestSource
    args: argparse.Namespace

    @property
    def router(self) -> str:
        return self.endpoints.router_url


# Online load ------------------------------------------------------------------------------------

async def closed_loop(run: Run, requests: list[Request], clients: int) -> tuple[list[Sample], float]:
    """`clients` clients each sending its next request when its last one ends; the samples and
    the seconds from the first sent to the last ended."""
    samples = [Sample(ROUTER) for _ in requests]
    pending = iter(zip(requests, samples))

    async def client() -> None:
        for request, sample in pending:
            await run.clients.send(request, sample)

    started = time.perf_counter()
    async with asyncio.timeout(run.args.phase_timeout):
        await asyncio.gather(*(client() for _ in range(clients)))
    return samples, time.perf_counter() - started


async def poisson(run: Run, requests: list[Request], rate: float,
                  rng: random.Random) -> tuple[list[Sample], float, list[float]]:
    """Each request sent at Poisson arrival times of `rate` per second; the samples, the seconds,
    and when each request was sent (seconds from the first)."""
    samples = [Sample(ROUTER) for _ in requests]
    sent = []
    started = time.perf_counter()
    async with asyncio.timeout(run.args.phase_timeout), asyncio.TaskGroup() as group:
        for request, sample in zip(requests, samples):
            sent.append(time.perf_counter() - started)
            group.create_task(run.clients.send(request, sample))
            await asyncio.sleep(rng.expovariate(rate))
    return samples, time.perf_counter() - started, sent


# Batches ----------------------------------------------------------------------------------------

async def create_batch(run: Run, requests: list[Request], name: str) -> dict:
    """Upload `requests` as a completions batch file (model auto, greedy, ignore_eos) and create
    its batch; the batch object."""
    lines = "".join(json.dumps({"custom_id": f"{name}-{index}", "method": "POST", "url": "/v1/completions",
                                "body": {"model": "auto", "prompt": request.prompt, "max_tokens": request.max_tokens,
                                         "temperature": 0, "ignore_eos": True}}) + "\n"
                    for index, request in enumerate(requests))
    upload = await run.http.post(run.router + FILES, data={"purpose": "batch"},
                                 files={"file": (f"{name}.jsonl", lines.encode(), "application/jsonl")})
    upload.raise_for_status()
    created = await run.http.post(run.router + BATCHES, json={"input_file_id": upload.json()["id"],
                                                              "endpoint": "/v1/completions",
                                                              "completion_window": "24h"})
    created.raise_for_status()
    return created.json()


async def batch_of(run: Run, batch_id: str) -> dict:
    answer = await run.http.get(f"{run.router}{BATCHES}/{batch_id}")
    answer.raise_for_status()
    return answer.json()


async def wait_until_ended(run: Run, batch_id: str) -> tuple[dict, float]:
    """The batch once it has ended, and when (time.perf_counter) this client saw it end."""
    async with asyncio.timeout(run.args.phase_timeout):
        while (batch := await batch_of(run, batch_id))["status"] not in ("completed", "failed", "expired",
                                                                          "cancelled"):
            await asyncio.sleep(POLL_SECONDS)
    return batch, time.perf_counter()


async def completion_tokens(run: Run, file_id: str | None) -> int:
    """The completion tokens of every answer in a batch's output file."""
    if file_id is None:
        return 0
    answer = await run.http.get(f"{run.router}{FILES}/{file_id}/content")
    answer.raise_for_status()
    return sum(json.loads(line)["response"]["body"]["usage"]["completion_tokens"]
               for line in answer.text.splitlines() if line)


async def drain(run: Run) -> dict:
    """(b): a batch alone, from create to completed."""
    started = time.perf_counter()
    batch = await create_batch(run, run.source.take(run.args.batch_lines), "alone")
    batch, seen_ended = await wait_until_ended(run, batch["id"])
    if batch["status"] != "completed":
        raise RuntimeError(f"the batch ended {batch['status']}: {batch.get('errors')}")
    tokens = await completion_tokens(run, batch["output_file_id"])
    # The API's times are whole seconds: over a drain of a minute that is within about 2 %.
    seconds = max(1, batch["completed_at"] - batch["in_progress_at"])
    return {"lines": batch["request_counts"]["total"], "completed": batch["request_counts"]["completed"],
            "failed": batch["request_counts"]["failed"], "completion_tokens": tokens, "api_seconds": seconds,
            "client_seconds": seen_ended - started}


async def online_with_batch(run: Run, rate: float, peak_rps: float, rng: random.Random) -> dict:
    """(d): the online load while a batch drains; the batch is cancelled afterwards."""
    online = run.source.take(run.args.online_requests)
    lines = math.ceil(BATCH_OVERSIZE * peak_rps * (run.args.online_requests / rate + BATCH_RAMP_SECONDS))
    batch = await create_batch(run, run.source.take(lines), "beside")
    await asyncio.sleep(BATCH_RAMP_SECONDS)
    before = (await batch_of(run, batch["id"]))["request_counts"]["completed"]
    samples, duration, sent = await poisson(run, online, rate, rng)
    after = await batch_of(run, batch["id"])
    drained_early = after["status"] != "in_progress"
    await run.http.post(f"{run.router}{BATCHES}/{batch['id']}/cancel")
    await wait_until_ended(run, batch["id"])
    done = after["request_counts"]["completed"] - before
    onset = [sample.ttft for sample, at in zip(samples, sent) if at < ONSET_SECONDS and sample.completed]
    later = [sample.ttft for sample, at in zip(samples, sent) if at >= ONSET_SECONDS and sample.completed]
    return {"samples": samples, "duration_s": duration, "batch_lines": lines, "lines_done_meanwhile": done,
            "batch_tokens_per_s_meanwhile": done * run.args.output_tokens / duration,
            "batch_ended_before_online_load": drained_early,
            # Where the tail comes from: the requests that met the batch running at full
            # concurrency (the policy shrinks it only once online requests come), and the rest.
            "ttft_ms_onset": {"requests": len(onset), "max": 1000 * max(onset, default=math.nan)},
            "ttft_ms_after_onset": {"requests": len(later), "p99": 1000 * percentile(later, 99)},
            "sent_s_and_ttft_ms": [(round(at, 3), round(1000 * sample.ttft, 1) if sample.completed else None)
                                   for sample, at in zip(samples, sent)]}


# The run ----------------------------------------------------------------------------------------

async def run_rounds(run: Run) -> dict:
    """Each round: (a), (b), (c), (d) in turn; (c) and (d) at the rate (a) of the first round sets."""
    args = run.args
    rng = random.Random(args.seed)
    peak, alone, beside, drains, rounds = [], [], [], [], []
    rate = None
    for number in range(1, args.rounds + 1):
        samples, seconds = await closed_loop(run, run.source.take(args.peak_requests), args.online_clients)
        peak_round = summarise(samples, seconds, UNJUDGED)
        peak.append((samples, seconds))
        if rate is None:
            rate = args.utilisation * peak_round["request_throughput"]
        print(f"round {number}: (a) peak {peak_round['output_token_throughput']:.0f} tok/s with "
              f"{args.online_clients} clients", flush=True)
        drained = await drain(run)
        drains.append(drained)
        print(f"round {number}: (b) batch alone {drained['completion_tokens'] / drained['api_seconds']:.0f} tok/s "
              f"({drained['completed']}/{drained['lines']} lines in {drained['api_seconds']} s)", flush=True)
        samples, seconds, _ = await poisson(run, run.source.take(args.online_requests), rate, rng)
        alone.append((samples, seconds))
        print(f"round {number}: (c) online alone at {rate:.2f}/s: TTFT p99 "
              f"{summarise(samples, seconds, UNJUDGED)['ttft_ms']['p99']:.0f} ms", flush=True)
        with_batch = await online_with_batch(run, rate, peak_round["request_throughput"], rng)
        beside.append((with_batch.pop("samples"), with_batch["duration_s"]))
        print(f"round {number}: (d) online + batch: TTFT p99 "
              f"{summarise(*beside[-1], UNJUDGED)['ttft_ms']['p99']:.0f} ms (after the first {ONSET_SECONDS:g} s "
              f"{with_batch['ttft_ms_after_onset']['p99']:.0f} ms, before it at most "
              f"{with_batch['ttft_ms_onset']['max']:.0f} ms), {with_batch['lines_done_meanwhile']} batch lines done "
              f"meanwhile", flush=True)
        rounds.append({"peak": peak_round, "drain": drained, "online_alone": summarise(*alone[-1], UNJUDGED),
                       "online_with_batch": {**summarise(*beside[-1], UNJUDGED), **with_batch}})
    return {"rate": rate, "rounds": rounds, "pooled": pooled(peak, drains, alone, beside),
            "median_ratios": median_ratios(rounds)}


def round_ratios(row: dict) -> tuple[float, float]:
    """One round's (drain / peak throughput, p99 TTFT with the batch / alone)."""
    drained = row["drain"]
    drain_ratio = drained["completion_tokens"] / drained["api_seconds"] / row["peak"]["output_token_throughput"]
    return drain_ratio, row["online_with_batch"]["ttft_ms"]["p99"] / row["online_alone"]["ttft_ms"]["p99"]


def median_ratios(rounds: list[dict]) -> dict:
    drain, ttft = zip(*(round_ratios(row) for row in rounds))
    return {"drain_ratio": statistics.median(drain), "ttft_p99_ratio": statistics.median(ttft)}


def pooled(peak: list, drains: list[dict], alone: list, beside: list) -> dict:
    """The rounds together: throughputs as all tokens over all seconds, TTFT over all samples."""
    peak_tokens = sum(sample.output_tokens for samples, _ in peak for sample in samples if sample.completed)
    peak_tps = peak_tokens / sum(seconds for _, seconds in peak)
    drain_tps = sum(row["completion_tokens"] for row in drains) / sum(row["api_seconds"] for row in drains)

    def ttft(groups: list) -> dict:
        values = [sample.ttft for samples, _ in groups for sample in samples if sample.completed]
        failed = sum(not sample.completed for samples, _ in groups for sample in samples)
        return {"p50_ms": 1000 * percentile(values, 50), "p99_ms": 1000 * percentile(values, 99),
                "samples": len(values), "failed": failed}

    online_alone, online_beside = ttft(alone), ttft(beside)
    return {"peak_tokens_per_s": peak_tps, "drain_tokens_per_s": drain_tps, "drain_ratio": drain_tps / peak_tps,
            "online_alone": online_alone, "online_with_batch": online_beside,
            "ttft_p50_ratio": online_beside["p50_ms"] / online_alone["p50_ms"],
            "ttft_p99_ratio": online_beside["p99_ms"] / online_alone["p99_ms"]}


def print_report(report: dict) -> None:
    pooled_ = report["pooled"]
    print(f"\nload average before / after: {report['load_average_before']} / {report['load_average_after']}")
    print(f"router flags: {' '.join(report['router_args']) or '(defaults)'}; online rate {report['rate']:.2f}/s")
    print(f"\n{'round':<7}{'peak tok/s':>11}{'drain tok/s':>12}{'drain/peak':>11}{'alone p50':>10}"
          f"{'alone p99':>10}{'+batch p50':>11}{'+batch p99':>11}{'p99 ratio':>10}{'lines meanwhile':>16}")
    for number, row in enumerate(report["rounds"], 1):
        peak, drained = row["peak"]["output_token_throughput"], row["drain"]
        drain_ratio, ttft_ratio = round_ratios(row)
        alone, beside = row["online_alone"]["ttft_ms"], row["online_with_batch"]["ttft_ms"]
        print(f"{number:<7}{peak:>11.0f}{drained['completion_tokens'] / drained['api_seconds']:>12.0f}"
              f"{drain_ratio:>11.2f}{alone['p50']:>10.1f}{alone['p99']:>10.1f}{beside['p50']:>11.1f}"
              f"{beside['p99']:>11.1f}{ttft_ratio:>10.2f}{row['online_with_batch']['lines_done_meanwhile']:>16}")
    alone, beside = pooled_["online_alone"], pooled_["online_with_batch"]
    print(f"{'pooled':<7}{pooled_['peak_tokens_per_s']:>11.0f}{pooled_['drain_tokens_per_s']:>12.0f}"
          f"{pooled_['drain_ratio']:>11.2f}{alone['p50_ms']:>10.1f}{alone['p99_ms']:>10.1f}{beside['p50_ms']:>11.1f}"
          f"{beside['p99_ms']:>11.1f}{pooled_['ttft_p99_ratio']:>10.2f}")
    median = report["median_ratios"]
    print(f"{'median':<7}{'':>23}{median['drain_ratio']:>11.2f}{'':>42}{median['ttft_p99_ratio']:>10.2f}")
    print(f"\nbar (1) online p99 TTFT with the batch <= {TTFT_P99_BAR:.2f}x alone (median of rounds): "
          f"{'met' if median['ttft_p99_ratio'] <= TTFT_P99_BAR else 'NOT met'} ({median['ttft_p99_ratio']:.2f}x)")
    print(f"bar (2) batch alone drains at >= {DRAIN_BAR:.0%} of peak (median of rounds): "
          f"{'met' if median['drain_ratio'] >= DRAIN_BAR else 'NOT met'} ({median['drain_ratio']:.0%})")
    failed = alone["failed"] + beside["failed"]
    if failed:
        print(f"{failed} online requests failed")


async def measure(endpoints: Endpoints, source: RequestSource, args: argparse.Namespace) -> dict:
    async with AsyncExitStack() as stack:
        clients = await Clients.open(stack, endpoints, (ROUTER,))
        run = Run(endpoints, clients.http, clients, source, args)
        # Warm-up: connections, the first prompts, a tiny batch through the worker.
        await closed_loop(run, source.take(2 * args.online_clients), args.online_clients)
        await wait_until_ended(run, (await create_batch(run, source.take(8), "warm-up"))["id"])
        return await run_rounds(run)


def main() -> None:
    args = build_parser().parse_args()
    spec = WorkloadSpec("fixed", prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens)
    source = RequestSource(TextTokenizer(build_demo_model("small")), spec, args.seed)
    report = {"command": shlex.join([sys.executable, *sys.argv]),
              "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
              "workload": spec.describe(), "router_args": args.router_arg,
              "load_average_before": [round(value, 2) for value in os.getloadavg()]}
    print(f"workload {spec.describe()}, greedy, ignore_eos; {args.rounds} rounds", flush=True)
    with ExitStack() as stack:
        from benchmarks.load.servers import start_servers  # the suite's port helper

        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="batch_drain-")))
        router_args = ["--batch_state_dir", str(log_dir / "batch-state"), *args.router_arg]
        print(f"starting the small demo model's stack (logs in {log_dir}) ...", flush=True)
        endpoints = start_servers(stack, (ROUTER,), args.num_threads, log_dir, router_args)
        report.update(asyncio.run(measure(endpoints, source, args)))
    report["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    print_report(report)
    if args.json:
        write_json(args.json, report)
        print(f"\nreport written to {args.json}")


if __name__ == "__main__":
    main()
