"""Hostile prompts at the stack's edges: each prompt built to make regular expressions backtrack,
up to the router's body limit, sent through the running stack (route graph, router, transformers,
predictors on the task models) while another process probes the server's health route:

    .venv/bin/python benchmarks/hostile_prompts.py          # about a minute on 2 cores

Edges: the router's OpenAI completions and chat completions with `model: "auto"`, its KServe v1
predict (what the route graph calls), and the route graph itself. Each prompt goes to each edge
REPEATS times in turn, then CONCURRENT copies of the 120 KB one at once (a handful of requests was
all it took to freeze the router before the routing features read a bounded window). For each it
reports the status codes, the slowest answer, and the slowest and 99th-percentile health probe
of the server under attack. The bar (issue 18): every prompt answered or refused within 2 s, and
health probes answered within 250 ms meanwhile."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.routing.prompts import pathological_prompts  # noqa: E402
from devstack.local_stack import (  # noqa: E402
    ROUTER_NAME,
    TASK_MODELS,
    Ports,
    Stack,
    local_url,
    stack_components,
    write_router_config,
)
from tests.reliability.health_prober import HealthProber  # noqa: E402
from tests.serving.ports import free_port_block  # noqa: E402

REPEATS = 3
CONCURRENT = 8
CONCURRENT_PROMPT = "unclosed LaTeX, 120 KB"
REQUEST_TIMEOUT_SECONDS = 60.0
ANSWER_BAR_SECONDS = 2.0
HEALTH_BAR_SECONDS = 0.25


@dataclass(frozen=True)
class Edge:
    name: str
    server: str  # "router" or "graph": whose health is probed
    path: str

    def body(self, prompt: str) -> dict:
        if self.path.endswith("/chat/completions"):
            return {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
        if self.path.endswith("/completions"):
            return {"model": "auto", "prompt": prompt, "max_tokens": 4}
        return {"instances": [{"prompt": prompt}]}


EDGES = (
    Edge("router, OpenAI completions", "router", "/openai/v1/completions"),
    Edge("router, OpenAI chat", "router", "/openai/v1/chat/completions"),
    Edge("router, v1 predict", "router", f"/v1/models/{ROUTER_NAME}:predict"),
    Edge("route graph", "graph", "/"),
)
HEALTH_PATHS = {"router": "/v2/health/live", "graph": "/readyz"}


@dataclass
class Row:
    prompt: str
    edge: str
    requests: int
    statuses: list[int]
    slowest_answer_s: float
    health_probes: int
    health_worst_ms: float
    health_p99_ms: float

    @property
    def meets_bar(self) -> bool:
        answered_or_refused = all(status < 500 or status == 503 for status in self.statuses)
        return (answered_or_refused and self.slowest_answer_s < ANSWER_BAR_SECONDS
                and self.health_worst_ms < HEALTH_BAR_SECONDS * 1000)


async def send(url: str, bodies: list[bytes]) -> tuple[list[int], float]:
    """The bodies sent at once; their statuses and the slowest answer's seconds."""
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS, trust_env=False) as client:
        async def one(body: bytes) -> tuple[int, float]:
            started = time.perf_counter()
            response = await client.post(url, content=body, headers={"content-type": "application/json"})
            return response.status_code, time.perf_counter() - started

        answers = await asyncio.gather(*(one(body) for body in bodies))
    return [status for status, _ in answers], max(seconds for _, seconds in answers)


def attack(base_urls: dict[str, str], edge: Edge, prompt_name: str, prompt: str, concurrent: bool) -> Row:
    body = json.dumps(edge.body(prompt)).encode()
    statuses, slowest = [], 0.0
    with HealthProber(base_urls[edge.server] + HEALTH_PATHS[edge.server]) as prober:
        if concurrent:
            statuses, slowest = asyncio.run(send(base_urls[edge.server] + edge.path, [body] * CONCURRENT))
        else:
            for _ in range(REPEATS):
                answered, seconds = asyncio.run(send(base_urls[edge.server] + edge.path, [body]))
                statuses += answered
                slowest = max(slowest, seconds)
    report = prober.report
    name = f"{prompt_name}, {CONCURRENT} at once" if concurrent else prompt_name
    return Row(name, edge.name, len(statuses), statuses, round(slowest, 3), report.probes,
               round(report.worst_seconds * 1000, 1), round(report.p99_seconds * 1000, 1))


def markdown(rows: list[Row]) -> str:
    lines = ["| prompt | edge | requests | statuses | slowest answer | health worst | health p99 | bar |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        statuses = ", ".join(f"{status} x{row.statuses.count(status)}" for status in sorted(set(row.statuses)))
        lines.append(f"| {row.prompt} | {row.edge} | {row.requests} | {statuses} | {row.slowest_answer_s:.3f} s | "
                     f"{row.health_worst_ms:.1f} ms | {row.health_p99_ms:.1f} ms | "
                     f"{'met' if row.meets_bar else 'MISSED'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hostile_prompts"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = free_port_block(30)
    ports = Ports(base=base, router=base + 20, graph=base + 25)
    log_dir = Path(tempfile.mkdtemp(prefix="hostile-prompts-"))
    print(f"logs in {log_dir}", flush=True)
    stack = Stack(stack_components(ports, write_router_config(log_dir / "router.yaml", ports), models=TASK_MODELS),
                  log_dir)
    base_urls = {"router": local_url(ports.router), "graph": local_url(ports.graph)}
    rows = []
    try:
        stack.start()
        prompts = pathological_prompts()
        for prompt_name, prompt in prompts.items():
            for edge in EDGES:
                rows.append(attack(base_urls, edge, prompt_name, prompt, concurrent=False))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
        for edge in EDGES[:1]:
            rows.append(attack(base_urls, edge, CONCURRENT_PROMPT, prompts[CONCURRENT_PROMPT], concurrent=True))
    finally:
        stack.stop()
    report = markdown(rows)
    (args.out / "report.md").write_text(report + "\n")
    (args.out / "summary.json").write_text(json.dumps([asdict(row) for row in rows], indent=1) + "\n")
    print(report)
    missed = [row for row in rows if not row.meets_bar]
    print(f"{len(rows) - len(missed)} of {len(rows)} rows met the bar (answered or refused within "
          f"{ANSWER_BAR_SECONDS:g} s, health within {HEALTH_BAR_SECONDS * 1000:g} ms)")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
