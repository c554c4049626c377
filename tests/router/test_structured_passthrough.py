"""The router's OpenAI edge passes structured outputs and the benign OpenAI fields on to the
transformer as the client wrote them (through a real router in front of a fake transformer), and
names the ignored fields itself."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.servers import Server

from .conftest import start_router, write_config
from .edge_fakes import FakeTransformer, running_transformers

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA}}
TOOLS = {"tools": [{"type": "function", "function": {"name": "f", "description": "F", "parameters": SCHEMA}}],
         "tool_choice": {"type": "function", "function": {"name": "f"}},
         "messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "done"}]}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeTransformer]]:
    with running_transformers("llm-small-a", "llm-large-a") as running:
        yield running


@pytest.fixture(scope="module")
def router(fakes, tmp_path_factory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("edge")
    config = write_config(directory / "router.yaml", targets={
        "small": {"model": "llm-small", "urls": [fakes["llm-small-a"].url]},
        "large": {"model": "llm-large", "urls": [fakes["llm-large-a"].url]}}, cascade={"enabled": False})
    server = start_router(config, directory)
    yield server
    server.stop()


@pytest.mark.parametrize("constraint", [{"response_format": FORMAT}, {"guided_choice": ["a", "b"]},
                                        {"structured_outputs": {"json": {"type": "object"}}}, TOOLS],
                         ids=["response_format", "guided_choice", "structured_outputs", "tools"])
def test_constraints_and_benign_fields_reach_the_transformer_unchanged(router, fakes, constraint):
    body = {"model": "llm-small", "messages": [{"role": "user", "content": "hi"}], "store": False,
            "metadata": {"k": "v"}, **constraint}
    fakes["llm-small-a"].reset()
    with httpx.Client(base_url=router.url, timeout=30) as http:
        response = http.post("/openai/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-ignored-fields"] == "store, metadata"
    sent = fakes["llm-small-a"].received[-1]["body"]
    assert sent == {key: value for key, value in body.items() if key != "model"} | {"model": sent["model"]}


def test_conflicting_constraints_are_refused_at_the_edge(router, fakes):
    fakes["llm-small-a"].reset()
    with httpx.Client(base_url=router.url, timeout=30) as http:
        response = http.post("/openai/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "hi"}], "guided_regex": "a",
            "response_format": {"type": "json_object"}})
    assert response.status_code == 400 and "each constrain the output" in response.json()["error"]["message"]
    assert not fakes["llm-small-a"].received
