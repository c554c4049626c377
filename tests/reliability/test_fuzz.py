"""Schemathesis fuzzes the OpenAPI schema each server publishes (/openapi.json, KServe's routes and
ours) against the real predictor, transformer and router: inputs that fit the schema and inputs
that break it, bounded in number. No input may get a 5xx or a stack trace."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.router.conftest import start_router, write_config
from tests.router.edge_fakes import running_transformers
from tests.runtime.conftest import start_server
from tests.servers import MODEL_NAME, Server
from tests.transformer.conftest import start_transformer

# A short context keeps every generated request short, so that sampling never dominates.
MAX_MODEL_LEN = "64"
EXAMPLES_PER_OPERATION = 20
# The model repository routes unload and load models: fuzzing them would take the server down
# on purpose.
SKIPPED_PATHS = ("/v2/repository/",)
# KServe answers 501 for what it does not implement (explaining, model versions): a statement
# about the server, not a failure.
NOT_IMPLEMENTED = 501
# Of five requests, four name the served model in their path, so that they reach our handlers.
RANDOM_MODEL_NAME_CHANCE = 5
STACK_TRACE_MARKERS = ("Traceback", 'File "')


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("predictor"), "--max_model_len", MAX_MODEL_LEN)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def transformer(predictor, tmp_path_factory) -> Iterator[Server]:
    started = start_transformer(tmp_path_factory.mktemp("transformer"), f"127.0.0.1:{predictor.http_port}",
                                "--max_model_len", MAX_MODEL_LEN)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def router(transformer, tmp_path_factory) -> Iterator[Server]:
    """The router's small model is the real transformer; its large model a fake one."""
    directory = tmp_path_factory.mktemp("router")
    with running_transformers("llm-large-a") as fakes:
        config = write_config(directory / "router.yaml", targets={
            "small": {"model": MODEL_NAME, "urls": [transformer.url]},
            "large": {"model": "llm-large", "urls": [fakes["llm-large-a"].url]},
        })
        started = start_router(config, directory)
        yield started
        started.stop()


def fuzzed_operations(server: Server) -> list:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    return [operation for operation in operations if not any(part in operation.path for part in SKIPPED_PATHS)]


def fuzz(server: Server, operation) -> int:
    """Runs the operation's examples against `server`; how many requests it sent."""
    sent = 0
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(case=strategy, draw=st.integers(1, RANDOM_MODEL_NAME_CHANCE))
    def run(case, draw: int) -> None:
        nonlocal sent
        if "model_name" in case.path_parameters and draw != RANDOM_MODEL_NAME_CHANCE:
            case.path_parameters["model_name"] = MODEL_NAME
        response = case.call(base_url=server.url, timeout=60)
        sent += 1
        described = f"{case.method} {case.formatted_path} {case.body!r:.300} -> {response.status_code}: " \
                    f"{response.text[:300]}"
        assert response.status_code < 500 or response.status_code == NOT_IMPLEMENTED, described
        # Only error bodies: the demo model's words come from Python's docs, which quote tracebacks.
        if response.status_code >= 400:
            assert not any(marker in response.text for marker in STACK_TRACE_MARKERS), described

    run()
    return sent


def fuzz_server(server: Server) -> Counter:
    sent = Counter({operation.label: fuzz(server, operation) for operation in fuzzed_operations(server)})
    print(f"\n{server.url}: {sum(sent.values())} requests over {len(sent)} operations")
    return sent


def check_still_serves(server: Server) -> None:
    assert httpx.get(f"{server.url}/v2/models/{MODEL_NAME}/ready", timeout=10).status_code == 200


def test_the_schema_lists_our_routes(transformer, router):
    transformer_paths = httpx.get(f"{transformer.url}/openapi.json", timeout=10).json()["paths"]
    router_paths = httpx.get(f"{router.url}/openapi.json", timeout=10).json()["paths"]
    for path in ("/openai/v1/completions", "/openai/v1/chat/completions", "/v2/models/{model_name}/generate"):
        assert path in transformer_paths, path
    assert "/openai/v1/chat/completions" in router_paths


@pytest.mark.parametrize("name", ["predictor", "transformer", "router"])
def test_no_input_gets_a_server_error(name, request):
    server = request.getfixturevalue(name)
    sent = fuzz_server(server)
    assert all(sent.values()), sent
    check_still_serves(server)
