"""Serving load, like `vllm bench serve`: latency, throughput and goodput of streamed requests.

Requests arrive at Poisson rates, all at once, or from a fixed number of clients, against the
predictor alone (`direct`, its generate_stream), through the transformer (`transformer`: OpenAI
completions over server-sent events; `websocket`) and through the router's OpenAI edge
(`router`, `model: "auto"`), in one run; beside them, as a peer, llama.cpp's llama-server on the
same model and threads (`llamacpp`, skipped with a message until `make llama-cpp` has built it).
Reports TTFT, TPOT, inter-token and end-to-end latency (mean, p50, p90, p99), request and token
throughput, errors (503s apart), goodput at the SLOs and, per level, the predictor's prefix-cache
hit rate; a table on stdout and, with --json, a file. Given no URLs it starts the small (or
--size large) demo model's predictor, transformer and router as `make serve` does.

Each level runs the targets one after another, on the same arrival times and fresh prompts of the
same shape (no run finds its prompts cached by another); --interleave instead sends request i to
target i mod n in one arrival stream, so machine noise hits them alike. An idle phase (one
request at a time, targets in turn, each sent a prompt of the same length) gives each hop's own
cost over the direct path.

    .venv/bin/python benchmarks/serve_load.py --targets direct,transformer,websocket --idle_requests 1200  # the hops
    .venv/bin/python benchmarks/serve_load.py                               # Poisson 2/s, 3 targets
    .venv/bin/python benchmarks/serve_load.py --rate 2,8,32 --idle_requests 0  # a sweep past saturation
    .venv/bin/python benchmarks/serve_load.py --concurrency 1,4,16 --workload fixed --prompt_tokens 256
    .venv/bin/python benchmarks/serve_load.py --workload shared-prefix --prefix_tokens 512 --targets direct
    .venv/bin/python benchmarks/serve_load.py --find_max_rate --slo_ttft_p99 1.0   # sustained rate per target
    .venv/bin/python benchmarks/serve_load.py --targets direct,transformer,websocket --interleave
    .venv/bin/python benchmarks/serve_load.py --targets direct,router,gateway --idle_requests 1200 --requests 32  # the gateway
    .venv/bin/python benchmarks/serve_load.py --targets transformer,llamacpp --size large --num_threads 2 \\
        --concurrency 1,4 --workload fixed --prompt_tokens 64 --output_tokens 64 --idle_requests 0  # llama.cpp
    .venv/bin/python benchmarks/serve_load.py --predictor_url http://127.0.0.1:9003 \\
        --transformer_url http://127.0.0.1:9001 --router_url http://127.0.0.1:8000  # `make serve`'s stack
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shlex
import sys
import tempfile
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.load.clients import (  # noqa: E402
    DIRECT,
    GATEWAY,
    LLAMACPP,
    PEERS,
    ROUTER,
    TARGETS,
    TRANSFORMER,
    WEBSOCKET,
    Endpoints,
)
from benchmarks.load.metrics import SLO, distribution_ms, paired_ttft_differences, summarise  # noqa: E402
from benchmarks.load.report import print_idle, print_levels, print_max_rates, write_json  # noqa: E402
from benchmarks.load.runner import Level, RunSettings, run_idle, run_level  # noqa: E402
from benchmarks.load.search import RateSearch, SearchBounds  # noqa: E402
from benchmarks.load.workload import WORKLOADS, RequestSource, WorkloadSpec  # noqa: E402
from benchmarks.peers import llama_cpp  # noqa: E402
from runtime.demo import DEMO_SIZES, build_demo_model  # noqa: E402
from devstack.local_stack import model_name  # noqa: E402
from transformer.tokenizer import TextTokenizer  # noqa: E402

WARM_UP_PER_TARGET = 2


def _list_of(kind):
    def parse(text: str) -> list:
        return [kind(item) for item in text.split(",")]
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    servers = parser.add_argument_group("servers (unset: start the small demo model's stack)")
    servers.add_argument("--predictor_url", help="a running predictor (direct target, /metrics)")
    servers.add_argument("--transformer_url", help="a running transformer in front of that predictor")
    servers.add_argument("--router_url", help="a running router whose small target is that transformer")
    servers.add_argument("--gateway_url", help="a running router with the gateway on, in front of that transformer")
    servers.add_argument("--gateway_key", help="a tenant's API key at --gateway_url")
    servers.add_argument("--llamacpp_url", help="a running llama-server on the same model (llamacpp target)")
    servers.add_argument("--model_name", help=f"the model the running servers serve (unset: {model_name('small')})")
    servers.add_argument("--size", choices=tuple(DEMO_SIZES), default="small", help="the demo model started here")
    servers.add_argument("--predictor_args", default="",
                         help="more flags for the predictor started here, as one string "
                              "(e.g. '--decode_step_target_seconds 0.25')")
    servers.add_argument("--num_threads", type=int, default=1,
                         help="torch threads of a predictor started here (and llama-server's threads)")
    servers.add_argument("--llamacpp_slots", type=int,
                         help="llama-server's parallel sequences (unset: the highest --concurrency, else 16)")
    parser.add_argument("--targets", type=_list_of(str), default=",".join((DIRECT, TRANSFORMER, ROUTER)),
                        help=f"comma-separated, of {', '.join(TARGETS)}")
    load = parser.add_argument_group("load (a comma-separated list is a sweep, a level each)")
    arrivals = load.add_mutually_exclusive_group()
    arrivals.add_argument("--rate", type=_list_of(float), default="2",
                          help="Poisson arrival rates, requests/s (inf: all at once)")
    arrivals.add_argument("--concurrency", type=_list_of(int),
                          help="closed loop: this many clients, each sending when its last request ends")
    load.add_argument("--requests", type=int, default=64, help="requests per level (and target, unless interleaved)")
    load.add_argument("--interleave", action="store_true",
                      help="one arrival stream for all targets (request i to target i mod n), the rate shared")
    load.add_argument("--level_timeout", type=float, default=120.0,
                      help="a level's requests still running after this many seconds fail")
    # A request's TTFT varies by a few ms on a small VM, more than a hop costs: a few hundred
    # pairs pin the hop's median to about a tenth of a millisecond, in under a minute.
    load.add_argument("--idle_requests", type=int, default=600, help="requests of the idle phase, all targets together (0: none)")
    load.add_argument("--seed", type=int, default=0)
    workload = parser.add_argument_group("workload")
    workload.add_argument("--workload", choices=WORKLOADS, default="random")
    workload.add_argument("--min_prompt_words", type=int, default=8, help="random")
    workload.add_argument("--max_prompt_words", type=int, default=160, help="random")
    workload.add_argument("--min_output_tokens", type=int, default=16, help="random")
    workload.add_argument("--max_output_tokens", type=int, default=64, help="random")
    workload.add_argument("--prompt_tokens", type=int, default=128, help="fixed; shared-prefix: after the prefix")
    workload.add_argument("--output_tokens", type=int, default=32, help="fixed and shared-prefix")
    workload.add_argument("--prefix_tokens", type=int, default=256, help="shared-prefix: the common prefix")
    slo = parser.add_argument_group("goodput SLOs")
    slo.add_argument("--slo_ttft", type=float, default=2.0, help="TTFT at most this (s)")
    slo.add_argument("--slo_tpot", type=float, default=0.2, help="time per output token at most this (s)")
    search = parser.add_argument_group("max-rate search (--find_max_rate: replaces the levels)")
    search.add_argument("--find_max_rate", action="store_true",
                        help="per target, the highest Poisson rate whose p99 TTFT stays within --slo_ttft_p99")
    defaults = SearchBounds()
    search.add_argument("--slo_ttft_p99", type=float, default=defaults.ttft_p99_limit, help="seconds")
    search.add_argument("--start_rate", type=float, default=defaults.start_rate)
    search.add_argument("--max_rate", type=float, default=defaults.max_rate)
    search.add_argument("--level_seconds", type=float, default=defaults.level_seconds,
                        help="seconds of arrivals per level (at least --min_requests requests)")
    search.add_argument("--min_requests", type=int, default=defaults.min_requests)
    search.add_argument("--refine_steps", type=int, default=defaults.refine_steps, help="bisections once bracketed")
    search.add_argument("--time_budget", type=float, default=240.0,
                        help="seconds for the whole search, shared equally by the targets")
    parser.add_argument("--json", type=Path, help="write the whole report here")
    return parser


def parse_args() -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {', '.join(sorted(unknown))}: choose from {', '.join(TARGETS)}")
    args.targets = tuple(dict.fromkeys(args.targets))
    if args.predictor_url or args.transformer_url or args.router_url:
        missing = missing_urls(args)
        if missing:
            parser.error(f"with running servers, the targets need {', '.join(missing)} too")
    elif args.model_name:
        parser.error("--model_name names the model of running servers: give their URLs too")
    elif LLAMACPP in args.targets and unbuilt_peer_message(args.size):
        print(unbuilt_peer_message(args.size), flush=True)
        args.targets = tuple(target for target in args.targets if target != LLAMACPP)
        if not args.targets:
            parser.exit(1, "no target left to measure\n")
    if args.find_max_rate and args.interleave:
        parser.error("--find_max_rate searches each target alone: drop --interleave")
    try:
        args.workload_spec = workload_spec(args)
    except ValueError as exc:
        parser.error(str(exc))
    args.slo = SLO(args.slo_ttft, args.slo_tpot)
    if args.llamacpp_slots is None:
        args.llamacpp_slots = max(args.concurrency) if args.concurrency else 16
    return args


def unbuilt_peer_message(size: str) -> str | None:
    """Why the llamacpp target is skipped, naming the build command; None when it is built."""
    missing = llama_cpp.missing_parts(size)
    if not missing:
        return None
    return (f"skipping {LLAMACPP}: llama.cpp is not built here (missing {', '.join(map(str, missing))}); "
            f"build it with: {llama_cpp.BUILD_COMMAND}")


def missing_urls(args: argparse.Namespace) -> list[str]:
    """The URL flags the targets need that were not given."""
    needed = {"predictor_url": True,
              "transformer_url": bool({TRANSFORMER, WEBSOCKET, ROUTER, GATEWAY} & set(args.targets)),
              "router_url": ROUTER in args.targets, "gateway_url": GATEWAY in args.targets,
              "gateway_key": GATEWAY in args.targets, "llamacpp_url": LLAMACPP in args.targets}
    return [f"--{name}" for name, need in needed.items() if need and not getattr(args, name)]


def workload_spec(args: argparse.Namespace) -> WorkloadSpec:
    return WorkloadSpec(args.workload, args.min_prompt_words, args.max_prompt_words, args.min_output_tokens,
                        args.max_output_tokens, args.prompt_tokens, args.output_tokens, args.prefix_tokens)


def levels_of(args: argparse.Namespace) -> list[Level]:
    if args.concurrency:
        return [Level(concurrency=clients) for clients in args.concurrency]
    return [Level(rate=rate) for rate in args.rate]


def endpoints_of(args: argparse.Namespace, stack: ExitStack) -> Endpoints:
    if args.predictor_url:
        return Endpoints(args.model_name or model_name(args.size), args.predictor_url, args.transformer_url,
                         args.router_url, args.gateway_url, args.gateway_key, args.llamacpp_url)
    from benchmarks.load.servers import start_servers  # the suite's port helper; only needed here

    log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="serve_load-")))
    print(f"starting the {args.size} demo model's servers for {', '.join(args.targets)} (logs in {log_dir}) ...",
          flush=True)
    return start_servers(stack, args.targets, args.num_threads, log_dir, size=args.size,
                         llamacpp_slots=args.llamacpp_slots, predictor_args=shlex.split(args.predictor_args))


def run_levels(args: argparse.Namespace, settings: RunSettings, source: RequestSource) -> list[dict]:
    """Each level on the targets in turn (or interleaved), each run with requests of its own."""
    groups = [args.targets] if args.interleave else [(target,) for target in args.targets]
    results = []
    for level in levels_of(args):
        for group in groups:
            result = asyncio.run(run_level(settings, level, source.take(args.requests), group))
            done = sum(row["completed"] for row in result["targets"].values())
            print(f"  {level.describe()} on {', '.join(group)}: {done}/{args.requests} done", flush=True)
            results.append(result)
    return results


def run_searches(args: argparse.Namespace, settings: RunSettings, source: RequestSource) -> list[dict]:
    bounds = SearchBounds(args.slo_ttft_p99, args.start_rate, args.max_rate, args.level_seconds, args.min_requests,
                          args.refine_steps, args.time_budget / len(args.targets))
    print(f"searching the highest Poisson rate with p99 TTFT <= {bounds.ttft_p99_limit:g} s, "
          f"{bounds.time_budget:.0f} s per target ...", flush=True)
    return [asyncio.run(RateSearch(settings, bounds, target, source).run()) for target in args.targets]


def run_idle_phase(args: argparse.Namespace, endpoints: Endpoints, source: RequestSource) -> dict:
    """A warm-up (connections, first prompts), then the idle phase on requests of its own: each
    target gets a prompt of the same length in turn (--idle_requests in all)."""
    targets = args.targets
    asyncio.run(run_idle(endpoints, source.take_matched(WARM_UP_PER_TARGET, len(targets)), targets))
    if not args.idle_requests:
        return {}
    groups = source.take_matched(max(1, args.idle_requests // len(targets)), len(targets))
    samples = asyncio.run(run_idle(endpoints, groups, targets))
    # Duration 1 s: the idle phase's throughput columns mean nothing.
    idle = {target: summarise([sample for sample in samples if sample.target == target], 1.0, args.slo)
            for target in targets}
    if DIRECT in targets:
        for target in targets:
            if target not in (DIRECT, *PEERS):
                differences = paired_ttft_differences(samples, len(targets), target, DIRECT)
                idle[target]["paired_hop_ttft_ms"] = distribution_ms(differences)
    if {GATEWAY, ROUTER} <= set(targets):
        # The gateway's own cost: the same edge with it on, against it off, on prompts of one length.
        differences = paired_ttft_differences(samples, len(targets), GATEWAY, ROUTER)
        idle[GATEWAY]["paired_over_router_ttft_ms"] = distribution_ms(differences)
    return idle


def main() -> None:
    args = parse_args()
    source = RequestSource(TextTokenizer(build_demo_model(args.size)), args.workload_spec, args.seed)
    report = {"command": shlex.join([sys.executable, *sys.argv]),
              "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "targets": list(args.targets), "workload": args.workload_spec.describe(),
              "slo": {"ttft_s": args.slo_ttft, "tpot_s": args.slo_tpot}, "interleave": args.interleave}
    print(f"workload {args.workload_spec.describe()}, greedy; goodput SLO: TTFT <= {args.slo_ttft} s, "
          f"TPOT <= {args.slo_tpot} s", flush=True)
    with ExitStack() as stack:
        endpoints = endpoints_of(args, stack)
        report["endpoints"] = dataclasses.asdict(endpoints)
        report["idle"] = run_idle_phase(args, endpoints, source)
        settings = RunSettings(endpoints, args.slo, args.level_timeout, args.seed)
        if args.find_max_rate:
            report["max_rate"] = run_searches(args, settings, source)
        else:
            report["levels"] = run_levels(args, settings, source)
    if args.find_max_rate:
        print_levels([trial for search in report["max_rate"] for trial in search["levels"]])
        print_max_rates(report["max_rate"])
    else:
        print_levels(report["levels"])
    if report["idle"]:
        print_idle(report["idle"])
    if args.json:
        write_json(args.json, report)
        print(f"\nreport written to {args.json}")


if __name__ == "__main__":
    main()
