"""The adversarial suite: each server (predictor, transformer, router, route graph) gets
ADVERSARIAL_CASES generated requests on its real routes - pathological text, wrong types for
every field, values and sizes at and past the limits, raw bodies that are not JSON (strategies
in adversarial_inputs.py, routes in adversarial_routes.py). Every case must be answered within
REQUEST_SECONDS, without a server error (but 501 and 503) or a stack trace, even mid-stream; and
the server's health route, probed from another process all along, must keep answering within
HEALTH_SECONDS. `make test` runs a slice; `make fuzz` runs 10,000 cases per server."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from router.graph_server import GRAPH_MAX_BODY_BYTES
from serving.server import COMPONENT_MAX_BODY_BYTES
from tests.servers import Server

from .adversarial_inputs import Case, Route, cases
from .adversarial_routes import GRAPH_ROUTES, PREDICTOR_ROUTES, ROUTER_ROUTES, TRANSFORMER_ROUTES, VOCAB_SIZE
from .conftest import FUZZ_MAX_MODEL_LEN, STACK_TRACE_MARKERS, check_still_serves, server_error
from .health_prober import HealthProber, HealthReport

CASES = int(os.environ.get("ADVERSARIAL_CASES", "200"))
REQUEST_SECONDS = 10.0
# The target is 250 ms; the bound leaves room for a shared CI machine (the observed worst is printed).
HEALTH_SECONDS = 1.0
# Mid-stream failures are reported as an error event whose message says so (serving/streaming.py).
INTERNAL_ERROR = "internal error"
# Generous: a case takes a few tens of milliseconds, those at the body limit a few hundred.
SECONDS_PER_CASE = 0.5

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(max(300, CASES * SECONDS_PER_CASE))]


@dataclass(frozen=True)
class Target:
    routes: tuple[Route, ...]
    health_path: str
    body_limits: tuple[int, ...]  # the server's own and, for the graph, the next hop's


KSERVE_HEALTH = "/v2/health/live"
TARGETS = {
    "predictor": Target(PREDICTOR_ROUTES, KSERVE_HEALTH, (COMPONENT_MAX_BODY_BYTES,)),
    "transformer": Target(TRANSFORMER_ROUTES, KSERVE_HEALTH, (COMPONENT_MAX_BODY_BYTES,)),
    "router": Target(ROUTER_ROUTES, KSERVE_HEALTH, (COMPONENT_MAX_BODY_BYTES,)),
    # The graph forwards what it takes to the router, whose limit is the smaller one.
    "graph": Target(GRAPH_ROUTES, "/readyz", (COMPONENT_MAX_BODY_BYTES, GRAPH_MAX_BODY_BYTES)),
}


@dataclass
class Answer:
    status: int
    body: bytes
    seconds: float


class Hang(Exception):
    pass


def send(client: httpx.Client, case: Case) -> Answer:
    """The whole answer (a stream read to its end); Hang if it takes longer than REQUEST_SECONDS."""
    start = time.monotonic()
    chunks = []
    try:
        with client.stream(case.method, case.path, content=case.body, headers=case.headers) as response:
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() - start > REQUEST_SECONDS:
                    raise Hang(f"the answer was still streaming after {REQUEST_SECONDS} s")
    except httpx.TimeoutException:
        raise Hang(f"no answer within {REQUEST_SECONDS} s") from None
    return Answer(response.status_code, b"".join(chunks), time.monotonic() - start)


def failure_of(answer: Answer) -> str | None:
    text = answer.body.decode(errors="replace")
    if answer.seconds > REQUEST_SECONDS:
        return f"answered after {answer.seconds:.1f} s"
    return server_error(answer.status, text) or (streamed_failure(text) if answer.status == 200 else None)


def streamed_failure(text: str) -> str | None:
    """A failure a streamed answer reported after its 200: an error event (SSE or JSON lines)
    saying the server failed, or carrying a stack trace."""
    for line in text.splitlines():
        try:
            event = json.loads(line.removeprefix("data: "))
        except ValueError:
            continue
        error = event.get("error") if isinstance(event, dict) else None
        if error is not None:
            message = json.dumps(error)
            if any(marker in message for marker in (INTERNAL_ERROR, *STACK_TRACE_MARKERS)):
                return f"a failure mid-stream: {message[:300]}"
    return None


@dataclass
class Tally:
    sent: int = 0
    kinds: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    # (start, end, kind) of each case, in time.time(): what was running when a probe was slow
    timeline: list[tuple[float, float, str]] = field(default_factory=list)

    def running_at(self, start: float, seconds: float) -> list[str]:
        return [kind for began, ended, kind in self.timeline if began <= start + seconds and ended >= start]


def attack(server: Server, target: Target) -> Tally:
    """Sends CASES cases; what happened to them. Failures are collected rather than raised, so that
    one run shows every kind of failure at once."""
    tally = Tally()
    strategy = cases(target.routes, VOCAB_SIZE, FUZZ_MAX_MODEL_LEN, target.body_limits)

    @settings(max_examples=CASES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Case) -> None:
        tally.sent += 1
        tally.kinds[case.kind] += 1
        began = time.time()
        try:
            answer = send(client, case)
        except (Hang, httpx.TransportError) as exc:
            tally.statuses[type(exc).__name__] += 1
            tally.failures.append(f"{exc!r} for {case!r}")
            return
        finally:
            tally.timeline.append((began, time.time(), f"{case.kind} ({len(case.body)} bytes)"))
        tally.statuses[answer.status] += 1
        if (failure := failure_of(answer)) is not None:
            tally.failures.append(f"{failure} for {case!r} -> {answer.status}: {answer.body[:300]!r}")

    with httpx.Client(base_url=server.url, timeout=REQUEST_SECONDS, trust_env=False) as client:
        run()
    return tally


def report(name: str, tally: Tally, health: HealthReport, seconds: float) -> None:
    print(f"\n{name}: {tally.sent} cases in {seconds:.0f} s ({tally.sent / seconds:.1f}/s), "
          f"{len(tally.failures)} failures; statuses {dict(tally.statuses.most_common())}; health: worst "
          f"{health.worst_seconds * 1000:.0f} ms, p99 {health.p99_seconds * 1000:.0f} ms over {health.probes} probes")
    print(f"  cases by kind: {dict(sorted(tally.kinds.items()))}")
    print(f"  running during the slowest probe: {tally.running_at(health.worst_at, health.worst_seconds)}")


@pytest.mark.parametrize("name", list(TARGETS))
def test_no_adversarial_input_breaks_the_server(name, request):
    server = request.getfixturevalue(f"fuzz_{name}")
    target = TARGETS[name]
    start = time.monotonic()
    with HealthProber(server.url + target.health_path) as prober:
        tally = attack(server, target)
    report(name, tally, prober.report, time.monotonic() - start)
    assert tally.sent >= CASES
    assert not tally.failures, f"{len(tally.failures)} failures, the first ones:\n" + "\n".join(tally.failures[:10])
    assert not prober.report.failures, prober.report.failures
    assert prober.report.worst_seconds < HEALTH_SECONDS, prober.report
    check_still_serves(server)
