"""The Grafana dashboard (manifests/observability/grafana-dashboard.json) and the KEDA queries
(manifests/autoscaling/keda.yaml) against a real Prometheus (Debian's `prometheus` package, which
.ci/run installs) scraping the local stack on the demo models every second, its router's gateway
on a real Redis with both response caches: after a load that streams, escalates, falls back, gets
503s and 429s, hits the caches, runs a batch and a background request and lives through a Redis
outage, every query returns series, and every metric a query names is one that the stack exports.
A dashboard is only as good as its queries, and a query that names a metric nobody exports
returns nothing, silently."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from devstack.local_stack import (
    SIZES,
    Component,
    Ports,
    Stack,
    kserve_component,
    predictor,
    transformer,
    write_router_config,
)
from runtime.demo import build_demo_model
from serving.openai_routes import BACKGROUND_PATH, BATCHES_PATH, FILES_PATH
from tests.devstack.stacks import running
from tests.redis_server import RedisServer, start_redis
from tests.servers import free_port
from tests.serving.ports import free_port_block

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = REPO_ROOT / "manifests" / "observability" / "grafana-dashboard.json"
KEDA = REPO_ROOT / "manifests" / "autoscaling" / "keda.yaml"
PROMETHEUS = shutil.which("prometheus")
SCRAPE_SECONDS = 1
# Grafana's $__rate_interval is at least four scrape intervals; the load lasts well under a minute.
RATE_INTERVAL = "1m"
START_TIMEOUT = 60.0
KEY = "sk-dashboard-team-0123"
TINY_KEY = "sk-dashboard-tiny-0123"
CHAT = "/openai/v1/chat/completions"
COMPLETIONS = "/openai/v1/completions"
# The large model runs one request and queues one: a third gets the predictor's 503 at once.
LARGE_LIMITS = ["--max_num_seqs", "1", "--max_queue", "1"]
PREDICTOR_ARGS = ["--device", "cpu", "--dtype", "float32", "--num_gpu_blocks", "128", "--attention_backend", "torch",
                  "--num_threads", "1"]

needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="needs the prometheus binary: `apt-get install prometheus` "
                                                          "(Debian's package; .ci/run installs it when missing)")


def bearer(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def write_tenants(path: Path) -> Path:
    """`team`, unlimited, and `tiny`, allowed two requests a minute: its third gets a 429."""
    tenants = [{"name": "team", "keys_sha256": [hashlib.sha256(KEY.encode()).hexdigest()]},
               {"name": "tiny", "keys_sha256": [hashlib.sha256(TINY_KEY.encode()).hexdigest()],
                "requests_per_minute": 2}]
    path.write_text(yaml.safe_dump({"tenants": tenants}))
    return path


def gateway_router(port: int, config: Path, directory: Path, redis: RedisServer) -> Component:
    args = ["--config", str(config), "--tenants_file", str(write_tenants(directory / "tenants.yaml")),
            "--usage_ledger", str(directory / "usage.db"), "--redis_url", redis.url, "--response_cache",
            "--semantic_cache"]
    return kserve_component("router", "router", args, port, "router")


# ---------------------------------------------------------------------------------------------
# Prometheus


@dataclass
class Prometheus:
    process: subprocess.Popen
    url: str
    log_path: Path

    def query(self, expr: str) -> list[dict]:
        """The instant vector (or scalar) `expr` evaluates to now; raises with Prometheus' error."""
        answer = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        data = answer["data"]
        return data["result"] if data["resultType"] in ("vector", "matrix") else [{"value": data["result"]}]

    def label_values(self, label: str, metric: str) -> list[str]:
        answer = httpx.get(f"{self.url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=10).json()
        return answer["data"]

    def metric_names(self) -> set[str]:
        return set(self.label_values("__name__", '{job="stack"}'))

    def scraped_every_target(self) -> bool:
        targets = httpx.get(self.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return bool(targets) and all(target["health"] == "up" for target in targets)


def write_prometheus_config(path: Path, targets: list[str]) -> Path:
    config = {"global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
              "scrape_configs": [{"job_name": "stack", "static_configs": [{"targets": targets}]}]}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def prometheus_and_stack(tmp_path_factory) -> Iterator[tuple[Prometheus, Stack, RedisServer]]:
    for size in SIZES:
        build_demo_model(size)
    directory = tmp_path_factory.mktemp("dashboard")
    base = free_port_block(30)
    ports = Ports(base=base, router=base + 15)
    # Every `auto` request goes to the small model first, so that the cascade runs on each.
    config = write_router_config(directory / "router.yaml", ports, policy={"threshold": 0.99},
                                 cascade={"enabled": True, "min_confidence": -3.0, "escalate_on_length": False})
    redis = start_redis(directory / "redis")
    components = [gateway_router(ports.router, config, directory, redis),
                  *(transformer(size, ports) for size in SIZES),
                  predictor("small", ports, PREDICTOR_ARGS), predictor("large", ports, PREDICTOR_ARGS + LARGE_LIMITS)]
    prometheus_config = write_prometheus_config(directory / "prometheus.yml",
                                                [f"127.0.0.1:{component.http_port}" for component in components])
    try:
        with running(Stack(components, log_dir=directory)) as stack, \
                prometheus_running(prometheus_config, directory) as prom:
            yield prom, stack, redis
    finally:
        redis.stop()


@contextmanager
def prometheus_running(config: Path, directory: Path) -> Iterator[Prometheus]:
    """`prometheus` on a free port with its storage in `directory`, once it has scraped every
    target; stopped on leaving, or when it fails to start."""
    port = free_port()
    log_path = directory / "prometheus.log"
    command = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    prometheus = Prometheus(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_for(lambda: _ready(prometheus), START_TIMEOUT, "prometheus to be ready")
        wait_for(prometheus.scraped_every_target, START_TIMEOUT, "prometheus to scrape every component")
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(prometheus: Prometheus) -> bool:
    if prometheus.process.poll() is not None:
        raise RuntimeError(f"prometheus exited with {prometheus.process.returncode}:\n"
                           f"{prometheus.log_path.read_text(errors='replace')[-3000:]}")
    try:
        return httpx.get(prometheus.url + "/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# The load


def chat(content: str, model: str = "auto", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0,
            **fields}


def status_of(client: httpx.Client, url: str, body: dict, headers: dict,
              first_event: threading.Event | None = None) -> int:
    """The status of a request, a stream read to its end (`first_event` set at its first event)."""
    if not body.get("stream"):
        return client.post(url, json=body, headers=headers).status_code
    with client.stream("POST", url, json=body, headers=headers) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and first_event is not None:
                first_event.set()
        return response.status_code


def waiting_on(stack: Stack, size: str) -> float:
    text = httpx.get(stack.component(f"predictor-{size}").url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_waiting{"))


def submit_batch(client: httpx.Client, router: str) -> str:
    """A batch of two chat lines for the small model; its id."""
    lines = b"".join(json.dumps({"custom_id": f"line-{index}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": chat(f"Batch line {index}", model="llm-small")}).encode() + b"\n"
                     for index in range(2))
    uploaded = client.post(router + FILES_PATH, files={"file": ("lines.jsonl", lines)}, data={"purpose": "batch"},
                           headers=bearer())
    assert uploaded.status_code == 200, uploaded.text
    created = client.post(router + BATCHES_PATH, json={"input_file_id": uploaded.json()["id"],
                                                       "endpoint": "/v1/chat/completions", "completion_window": "24h"},
                          headers=bearer())
    assert created.status_code == 200, created.text
    return created.json()["id"]


def submit_background(client: httpx.Client, router: str) -> str:
    submitted = client.post(router + CHAT, json=chat("In the background", model="llm-small", background=True),
                            headers=bearer())
    assert submitted.status_code == 200, submitted.text
    return submitted.json()["id"]


def batch_status(client: httpx.Client, router: str, batch_id: str) -> str:
    """The batch's status once it has ended."""
    ended = ("completed", "failed", "expired", "cancelled")
    wait_for(lambda: client.get(f"{router}{BATCHES_PATH}/{batch_id}", headers=bearer()).json()["status"] in ended,
             60, f"batch {batch_id} to end")
    return client.get(f"{router}{BATCHES_PATH}/{batch_id}", headers=bearer()).json()["status"]


def send_load(stack: Stack, redis: RedisServer) -> dict[str, list]:
    """A batch and a background request queued first (they run on spare capacity), cascades and
    streams through the small model, the same request again and a near duplicate of it (the
    exact and the semantic cache's hits), 429s of the tiny tenant, and the large model kept full
    (one stream running, one waiting) while requests for it get its 503 (naming it) or fall back
    to the small model (`auto` with `x-route: large`); once the batch has ended, a request of the
    tiny tenant while Redis is down (served: the gateway fails open). The statuses, by kind of
    request."""
    router = stack.component("router").url
    seen: dict[str, list] = {}
    with httpx.Client(timeout=120) as client:
        def send(kind: str, path: str, body: dict, headers: dict, first_event: threading.Event | None = None) -> None:
            seen.setdefault(kind, []).append(status_of(client, router + path, body, headers, first_event))

        batch_id, background_id = submit_batch(client, router), submit_background(client, router)
        for index in range(3):
            send("cascade", CHAT, chat(f"Tell me about tea {index}"), bearer())
            send("small stream", CHAT, chat(f"Stream about tea {index}", max_tokens=16, stream=True), bearer())
        seen["cache"] = [client.post(router + CHAT, json=chat(content), headers=bearer()).headers.get("x-cache")
                         for content in ("Tell me about tea 0", "Tell me about tea 0?")]
        tiny = {"model": "llm-small", "prompt": "Hi", "max_tokens": 2}
        for _ in range(3):
            send("tiny", COMPLETIONS, tiny, bearer(TINY_KEY))
        # The breaker of the large model's replica opens on 3 consecutive failures (router.yaml),
        # and a success counts from a stream's first token: the 503s come after the running
        # stream's first token, and before the waiting one's.
        long_stream = {"model": "llm-large", "prompt": "Go on and on", "max_tokens": 120, "ignore_eos": True,
                       "stream": True}
        first_token = threading.Event()
        running = threading.Thread(target=send, args=("large stream", COMPLETIONS, long_stream, bearer(), first_token))
        waiting = threading.Thread(target=send, args=("large stream", COMPLETIONS, long_stream, bearer()))
        running.start()
        wait_for(first_token.is_set, 30, "the first stream's first token")
        waiting.start()
        wait_for(lambda: waiting_on(stack, "large") >= 1, 30, "the large model's queue to fill")
        send("large named", CHAT, chat("Are you full?", model="llm-large"), bearer())
        for index in range(2):
            send("large hinted", CHAT, chat(f"Fall back {index}"), {**bearer(), "x-route": "large"})
        running.join()
        waiting.join()
        seen["background"] = [client.get(f"{router}{BACKGROUND_PATH}/{background_id}", params={"wait": 30},
                                         headers=bearer()).json()["status"]]
        seen["batch"] = [batch_status(client, router, batch_id)]
        redis.stop()
        try:
            send("redis down", COMPLETIONS, tiny, bearer(TINY_KEY))
        finally:
            redis.restart()
    return seen


# ---------------------------------------------------------------------------------------------
# The queries


@dataclass(frozen=True)
class Query:
    where: str
    expr: str


def dashboard_queries() -> list[Query]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [Query(f"panel {panel['title']!r} {target['refId']}", target["expr"])
            for panel in dashboard["panels"] for target in panel.get("targets", [])]


def keda_queries() -> list[Query]:
    queries = []
    for body in yaml.safe_load_all(KEDA.read_text()):
        for metric in body["spec"]["predictor"]["autoScaling"]["metrics"]:
            queries.append(Query(f"KEDA {body['metadata']['name']}", metric["external"]["metric"]["query"]))
    return queries


def variables() -> list[dict]:
    return [variable for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]
            if variable["type"] == "query"]


LABEL_VALUES = re.compile(r"label_values\((?P<metric>[^,]+),\s*(?P<label>\w+)\)")


def substituted(expr: str, values: dict[str, str]) -> str:
    """`expr` as Grafana sends it: each variable replaced by its values (a multi-value variable as
    a regex alternation, as Grafana formats it for =~), $__rate_interval by an interval."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name, value in values.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, f"a variable left unsubstituted: {expr}"
    return expr


# Words of PromQL that are not metric names: functions come before "(", labels inside {} and by (...).
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}
GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names_of(expr: str) -> set[str]:
    """The metric names an expression selects: what is left once label matchers, groupings,
    ranges, strings and function calls are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = GROUPINGS.sub(" ", expr)
    names = set()
    for match in NAME.finditer(expr):
        rest = expr[match.end():].lstrip()
        if not rest.startswith("(") and match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def test_metric_names_of_a_query() -> None:
    expr = ('histogram_quantile(0.9, sum by (le, model_name) (rate(vllm:time_to_first_token_seconds_bucket'
            '{model_name=~"$model"}[1m]))) / scalar(sum(rate(router_requests_total[1m]))) or on() vector(0)')
    assert metric_names_of(expr) == {"vllm:time_to_first_token_seconds_bucket", "router_requests_total"}


# ---------------------------------------------------------------------------------------------
# Against Prometheus


@needs_prometheus
def test_every_dashboard_and_keda_query_returns_series(prometheus_and_stack) -> None:
    prometheus, stack, redis = prometheus_and_stack
    seen = send_load(stack, redis)
    assert set(seen["cascade"]) == {200} and set(seen["small stream"]) == {200}, seen
    assert set(seen["large stream"]) == {200}, seen
    assert seen["tiny"] == [200, 200, 429], seen
    assert seen["large named"] == [503], seen
    assert set(seen["large hinted"]) == {200}, seen
    assert seen["cache"] == ["hit", "hit"], seen
    assert seen["background"] == ["completed"] and seen["batch"] == ["completed"], seen
    assert seen["redis down"] == [200], seen
    # Two scrapes after the load, so that every counter's last increment is in Prometheus.
    time.sleep(3 * SCRAPE_SECONDS)
    exported = prometheus.metric_names()
    values = {}
    for variable in variables():
        found = LABEL_VALUES.fullmatch(variable["query"]["query"])
        assert found, f"variable {variable['name']}: not a label_values query"
        options = prometheus.label_values(found["label"], found["metric"])
        assert options, f"variable {variable['name']}: {variable['query']['query']} has no values"
        values[variable["name"]] = "|".join(options)
    queries = dashboard_queries() + keda_queries()
    assert len(queries) > 20
    assert [query.where for query in queries if not metric_names_of(query.expr)] == []
    missing_metrics = {query.where: sorted(metric_names_of(query.expr) - exported) for query in queries}
    assert {where: names for where, names in missing_metrics.items() if names} == {}
    empty = [f"{query.where}: {query.expr}" for query in queries
             if not prometheus.query(substituted(query.expr, values))]
    assert empty == []
