"""Fixtures of the reliability tests: the demo model built once before any server starts, the
servers the fuzzing tests attack (short context, each module its own), and the helpers that read
a server process's health from the outside (its gauges, its memory, its answers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.demo import build_demo_model
from tests.router.conftest import start_graph_runner, start_router, write_config
from tests.router.edge_fakes import running_transformers
from tests.runtime.conftest import start_server
from tests.servers import MODEL_NAME, REPO_ROOT, Server
from tests.transformer.conftest import start_transformer

# The predictor's gauges that must read zero once a server has nothing to do.
LOAD_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
# A short context keeps every generated request short, so that sampling never dominates a fuzzing run.
FUZZ_MAX_MODEL_LEN = 64
# KServe answers 501 for what it does not implement (explaining, model versions), and 503 (with
# Retry-After) is the contract for "not now": statements about the server, not failures.
ACCEPTED_SERVER_ERRORS = frozenset({501, 503})
STACK_TRACE_MARKERS = ("Traceback", 'File "')
ROUTE_GRAPH = REPO_ROOT / "manifests" / "graphs" / "route.yaml"


@pytest.fixture(scope="session", autouse=True)
def demo_model_dir() -> Path:
    return build_demo_model("small")


@pytest.fixture(scope="module")
def fuzz_predictor(tmp_path_factory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("predictor"), "--max_model_len", str(FUZZ_MAX_MODEL_LEN))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def fuzz_transformer(fuzz_predictor, tmp_path_factory) -> Iterator[Server]:
    started = start_transformer(tmp_path_factory.mktemp("transformer"), f"127.0.0.1:{fuzz_predictor.http_port}",
                                "--max_model_len", str(FUZZ_MAX_MODEL_LEN))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def fuzz_router(fuzz_transformer, tmp_path_factory) -> Iterator[Server]:
    """The router's small model is the real transformer; its large model a fake one (the router
    needs two models of different names)."""
    directory = tmp_path_factory.mktemp("router")
    with running_transformers("llm-large-a") as fakes:
        config = write_config(directory / "router.yaml", targets={
            "small": {"model": MODEL_NAME, "urls": [fuzz_transformer.url]},
            "large": {"model": "llm-large", "urls": [fakes["llm-large-a"].url]},
        })
        started = start_router(config, directory)
        yield started
        started.stop()


@pytest.fixture(scope="module")
def fuzz_graph(fuzz_router, fuzz_transformer, tmp_path_factory) -> Iterator[Server]:
    """The manifests' route graph: the real router decides, and either route reaches the real
    transformer (v1 predict), so that every request the graph takes runs the whole stack."""
    transformer_predict = f"{fuzz_transformer.url}/v1/models/{MODEL_NAME}:predict"
    services = {"router": f"{fuzz_router.url}/v1/models/{MODEL_NAME}:predict",
                "llm-small": transformer_predict, "llm-large": transformer_predict}
    started = start_graph_runner(ROUTE_GRAPH, services, tmp_path_factory.mktemp("graph"))
    yield started
    started.stop()


def server_error(status: int, body: str) -> str | None:
    """What is wrong with an answer as a sign of a server failure (a 5xx the server does not mean,
    a stack trace in an error body), or None. Only error bodies are searched: the demo model's
    words come from Python's docs, which quote tracebacks."""
    if status >= 500 and status not in ACCEPTED_SERVER_ERRORS:
        return f"server error {status}"
    if status >= 400 and any(marker in body for marker in STACK_TRACE_MARKERS):
        return "a stack trace in the error body"
    return None


def check_still_serves(server: Server) -> None:
    assert httpx.get(server.url + server.ready_path, timeout=10).status_code == 200


def settled_gauges(predictor: Server, timeout: float = 10.0) -> dict[str, float]:
    """The load gauges, once they have read zero or `timeout` has passed (aborts reach the engine
    thread a moment after the response ends)."""
    return {name: predictor.wait_for_metric(name, lambda value: value == 0, timeout) for name in LOAD_GAUGES}


def rss_bytes(server: Server) -> int:
    """The server process's resident memory, from /proc."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {server.process.pid}")
