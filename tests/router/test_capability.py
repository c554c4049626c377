"""Capability routing, through a real `python -m router` in front of fake transformers whose large
target serves no chat (`chat: false`, as a base model without a chat template): an `auto` chat
never reaches it - not by the policy, an x-route hint, the fallback or the cascade - and says so
(x-route-reason, the decision log, the metrics, the graph step's `route_reason`), while completions
still route by the policy and a chat that names the model gets that model's own answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.servers import Server

from .conftest import ROUTER_NAME, start_router, write_config
from .edge_fakes import FakeTransformer, edge_client, running_transformers
from .test_learning_edge import logged_lines
from .test_openai_edge import CHAT, CHIT_CHAT, COMPLETIONS, DEMANDING, THRESHOLD, chat, router_metric

MOVED = "capability: llm-large serves no chat"
UNSURE = [-0.1, -9.0]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeTransformer]]:
    with running_transformers("llm-small-a", "llm-large-a") as running:
        yield running


@pytest.fixture(scope="module")
def decision_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("log") / "decisions.jsonl"


@pytest.fixture(scope="module")
def router(fakes, decision_log, tmp_path_factory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("capability")
    config = write_config(
        directory / "router.yaml",
        targets={"small": {"model": "llm-small", "urls": [fakes["llm-small-a"].url], "cost_per_token": 134.48},
                 "large": {"model": "llm-large", "urls": [fakes["llm-large-a"].url], "cost_per_token": 268.04,
                           "chat": False}},
        policy={"threshold": THRESHOLD},
        cascade={"enabled": True, "min_confidence": -2.5},
        learning={"decision_log": str(decision_log), "log_prompts": "full"},
    )
    server = start_router(config, directory)
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture
def http(router, fakes) -> Iterator[httpx.Client]:
    with edge_client(router.url, fakes) as client:
        yield client


def test_an_auto_chat_the_policy_sends_large_goes_to_the_model_that_serves_chat(http, fakes, router, decision_log):
    response = http.post(CHAT, json=chat(DEMANDING), headers={"x-request-id": "moved-1"})
    assert response.status_code == 200, response.text
    assert response.headers["x-route"] == "small" and response.headers["x-route-reason"] == MOVED
    # The policy's own score stays visible: it wanted the large model.
    assert float(response.headers["x-route-score"]) >= THRESHOLD
    assert response.json()["model"] == "llm-small" and fakes["llm-large-a"].received == []
    [logged] = [line for line in logged_lines(decision_log, 1) if line.request_id == "moved-1"]
    assert logged.route == "small" and logged.decided_by == "capability" and logged.answered_by == "small"
    assert router_metric(router, "router_requests_total", route="small", decided_by="capability") >= 1


def test_streamed_chats_and_route_hints_are_moved_too(http, fakes):
    streamed = http.post(CHAT, json=chat(DEMANDING, stream=True))
    hinted = http.post(CHAT, json=chat(CHIT_CHAT), headers={"x-route": "large"})
    for response in (streamed, hinted):
        assert response.status_code == 200, response.text
        assert response.headers["x-route"] == "small" and response.headers["x-route-reason"] == MOVED
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert fakes["llm-large-a"].received == []


def test_a_chat_the_small_model_answers_unsurely_is_not_escalated(http, fakes):
    fakes["llm-small-a"].token_logprobs = UNSURE
    response = http.post(CHAT, json=chat(CHIT_CHAT))
    assert response.status_code == 200, response.text
    assert response.headers["x-route"] == "small" and "x-route-escalated" not in response.headers
    assert "x-route-reason" not in response.headers  # the policy chose small itself
    assert fakes["llm-large-a"].received == []
    # A completion as unsure is escalated: the cascade is on, the large model serves completions.
    escalated = http.post(COMPLETIONS, json={"model": "auto", "prompt": CHIT_CHAT})
    assert escalated.headers["x-route"] == "large" and escalated.headers["x-route-escalated"] == "low_confidence"


def test_a_chat_does_not_fall_back_to_the_model_without_chat(http, fakes):
    fakes["llm-small-a"].status = 503
    response = http.post(CHAT, json=chat(CHIT_CHAT))
    assert response.status_code == 503 and fakes["llm-large-a"].received == []
    completion = http.post(COMPLETIONS, json={"model": "auto", "prompt": CHIT_CHAT})
    assert completion.status_code == 200 and completion.headers["x-route-fallback"] == "small:unavailable"


def test_completions_still_route_by_the_policy(http):
    demanding = http.post(COMPLETIONS, json={"model": "auto", "prompt": DEMANDING})
    easy = http.post(COMPLETIONS, json={"model": "auto", "prompt": CHIT_CHAT})
    assert demanding.headers["x-route"] == "large" and demanding.json()["model"] == "llm-large"
    assert easy.headers["x-route"] == "small"
    assert "x-route-reason" not in demanding.headers


def test_a_chat_that_names_the_model_without_chat_gets_its_answer(http, fakes):
    """Its transformer's 400 (no chat template) is the client's answer, passed through."""
    fakes["llm-large-a"].status = 400
    response = http.post(CHAT, json=chat(CHIT_CHAT, model="llm-large"))
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "llm-large-a answered 400"
    assert response.headers["x-route"] == "large" and fakes["llm-small-a"].received == []


def test_the_graph_step_moves_a_chat_and_says_why(http):
    body = {"instances": [{"prompt": CHIT_CHAT}, {"messages": [{"role": "user", "content": DEMANDING}]}]}
    routed = http.post(f"/v1/models/{ROUTER_NAME}:predict", json=body).json()
    assert routed["route"] == "small" and routed["route_reason"] == MOVED
    prompts_only = http.post(f"/v1/models/{ROUTER_NAME}:predict", json={"instances": [{"prompt": DEMANDING}]}).json()
    assert prompts_only["route"] == "large" and "route_reason" not in prompts_only


def test_a_websocket_chat_goes_to_the_model_that_serves_chat(router, fakes):
    async def generate() -> list[dict]:
        async with websockets.connect(f"ws://127.0.0.1:{router.http_port}/ws/v1/generate") as socket:
            await socket.send(json.dumps({"type": "generate", "id": "c", "messages": [
                {"role": "user", "content": DEMANDING}]}))
            messages = []
            while not messages or messages[-1]["type"] not in ("done", "error"):
                messages.append(json.loads(await asyncio.wait_for(socket.recv(), 10)))
            return messages

    for fake in fakes.values():
        fake.reset()
    messages = asyncio.run(generate())
    assert messages[-1]["type"] == "done" and messages[-1]["model"] == "llm-small", messages
    assert fakes["llm-large-a"].received == []


def test_no_target_serving_chat_refuses_an_auto_chat(fakes, tmp_path):
    config = write_config(
        tmp_path / "router.yaml",
        targets={"small": {"model": "llm-small", "urls": [fakes["llm-small-a"].url], "chat": False},
                 "large": {"model": "llm-large", "urls": [fakes["llm-large-a"].url], "chat": False}},
        policy={"threshold": THRESHOLD},
    )
    server = start_router(config, tmp_path)
    try:
        response = httpx.post(server.url + CHAT, json=chat(CHIT_CHAT), timeout=30)
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith("neither llm-small nor llm-large serves chat")
    finally:
        server.stop()
