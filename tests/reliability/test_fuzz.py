"""Schemathesis fuzzes the OpenAPI schema each server publishes (/openapi.json, KServe's routes and
ours) against the real predictor, transformer and router: inputs that fit the schema and inputs
that break it, bounded in number. No input may get a 5xx or a stack trace."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.servers import MODEL_NAME, Server

from .conftest import check_still_serves, server_error

EXAMPLES_PER_OPERATION = 20
# The model repository routes unload and load models: fuzzing them would take the server down
# on purpose.
SKIPPED_PATHS = ("/v2/repository/",)
# Of five requests, four name the served model in their path, so that they reach our handlers.
RANDOM_MODEL_NAME_CHANCE = 5


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
        failure = server_error(response.status_code, response.text)
        assert failure is None, f"{failure}: {case.method} {case.formatted_path} {case.body!r:.300} -> " \
                                f"{response.status_code}: {response.text[:300]}"

    run()
    return sent


def fuzz_server(server: Server) -> Counter:
    sent = Counter({operation.label: fuzz(server, operation) for operation in fuzzed_operations(server)})
    print(f"\n{server.url}: {sum(sent.values())} requests over {len(sent)} operations")
    return sent


def test_the_schema_lists_our_routes(fuzz_transformer, fuzz_router):
    transformer_paths = httpx.get(f"{fuzz_transformer.url}/openapi.json", timeout=10).json()["paths"]
    router_paths = httpx.get(f"{fuzz_router.url}/openapi.json", timeout=10).json()["paths"]
    for path in ("/openai/v1/completions", "/openai/v1/chat/completions", "/v2/models/{model_name}/generate"):
        assert path in transformer_paths, path
    assert "/openai/v1/chat/completions" in router_paths


@pytest.mark.parametrize("name", ["predictor", "transformer", "router"])
def test_no_input_gets_a_server_error(name, request):
    server = request.getfixturevalue(f"fuzz_{name}")
    sent = fuzz_server(server)
    assert all(sent.values()), sent
    check_still_serves(server)
