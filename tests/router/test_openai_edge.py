"""The router's OpenAI edge, through a real `python -m router` process in front of fake transformers:
routing by policy, hint or model name; bodies checked before any call; streams passed through
byte for byte and closed when the client leaves; fallback to the other model on 503, refused
connections and timeouts; the cascade; least-loaded replicas; circuit breakers that hold requests
back from a failing replica; and the metrics of it all."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, free_port

from .conftest import start_router, write_config
from .edge_fakes import FakeTransformer, edge_client, running_transformers

THRESHOLD = 0.3
CHIT_CHAT = "How are you doing today?"
DEMANDING = ("Here is my Python code:\n```python\ndef mean(values):\n    return sum(values) / len(values)\n```\n"
             "Explain why it fails on an empty list, then rewrite it step by step, and prove the new version "
             "never divides by zero.")
COMPLETIONS = "/openai/v1/completions"
CHAT = "/openai/v1/chat/completions"
REQUEST_SECONDS = 1.0
METRICS_INTERVAL = 0.1
# The shared router's breakers open only on refused connections: the failures the other tests
# provoke one after the other must not hold their requests back.
LENIENT_BREAKERS = {"failure_threshold": 1000, "open_seconds": 0.5}


def edge_config(path: Path, small_urls: list, large_urls: list, breakers: dict = LENIENT_BREAKERS) -> Path:
    return write_config(
        path,
        targets={"small": {"model": "llm-small", "urls": small_urls},
                 "large": {"model": "llm-large", "urls": large_urls}},
        policy={"threshold": THRESHOLD},
        cascade={"enabled": True, "min_confidence": -2.5, "escalate_on_length": True},
        timeouts={"connect_seconds": 1, "request_seconds": REQUEST_SECONDS},
        load_balancing={"metrics_interval_seconds": METRICS_INTERVAL},
        circuit_breakers=breakers,
    )


def replica(fake: FakeTransformer) -> dict:
    return {"url": fake.url, "metrics_url": fake.url + "/metrics"}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeTransformer]]:
    with running_transformers("llm-small-a", "llm-small-b", "llm-large-a") as running:
        yield running


@pytest.fixture(scope="module")
def router(fakes, tmp_path_factory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("edge")
    config = edge_config(directory / "router.yaml", [replica(fakes["llm-small-a"]), replica(fakes["llm-small-b"])],
                         [fakes["llm-large-a"].url])
    server = start_router(config, directory)
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture
def http(router, fakes) -> Iterator[httpx.Client]:
    with edge_client(router.url, fakes) as client:
        yield client


def chat(content: str, model: str = "auto", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def received(fakes: dict[str, FakeTransformer], prefix: str) -> list[dict]:
    return [request for name, fake in fakes.items() if name.startswith(prefix) for request in fake.received]


def router_metric(router: Server, name: str, **labels: str) -> float:
    """The sum of a metric's samples on the router's /metrics that carry `labels`."""
    total = 0.0
    for line in httpx.get(f"{router.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# Routing

def test_models_lists_auto_and_both_targets(http):
    models = http.get("/openai/v1/models").json()
    assert [card["id"] for card in models["data"]] == ["auto", "llm-small", "llm-large"]
    assert http.get("/openai/v1/models/auto").json()["id"] == "auto"
    missing = http.get("/openai/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_auto_routes_by_policy_and_says_so(http, fakes):
    small = http.post(CHAT, json=chat(CHIT_CHAT))
    large = http.post(CHAT, json=chat(DEMANDING))
    assert small.headers["x-route"] == "small" and float(small.headers["x-route-score"]) < THRESHOLD
    assert large.headers["x-route"] == "large" and float(large.headers["x-route-score"]) >= THRESHOLD
    assert "x-route-fallback" not in large.headers and "x-route-escalated" not in large.headers
    # The target gets the request with its own model name; the answer keeps the name it gave.
    [to_large] = received(fakes, "llm-large")
    assert to_large["body"] == {**chat(DEMANDING), "model": "llm-large"}
    assert large.json()["model"] == "llm-large" and large.json()["choices"][0]["message"]["content"] == \
        "llm-large-a answers"


def test_a_model_name_or_a_hint_chooses_the_target(http, fakes):
    named = http.post(COMPLETIONS, json={"model": "llm-large", "prompt": CHIT_CHAT})
    hinted = http.post(COMPLETIONS, json={"model": "auto", "prompt": DEMANDING}, headers={"x-route": "small"})
    assert named.headers["x-route"] == "large" and "x-route-score" not in named.headers
    assert hinted.headers["x-route"] == "small" and hinted.json()["choices"][0]["text"].startswith("llm-small")
    assert http.post(COMPLETIONS, json={"model": "auto", "prompt": "x"}, headers={"x-route": "medium"}).status_code \
        == 400


def test_token_id_prompts_are_routed_by_their_length(http):
    response = http.post(COMPLETIONS, json={"model": "auto", "prompt": list(range(3000))})
    assert response.headers["x-route"] == "large"


def test_bad_bodies_get_openai_400s_before_any_call(http, fakes):
    unknown_field = http.post(CHAT, json=chat(CHIT_CHAT, temprature=0.5))
    no_messages = http.post(CHAT, json={"model": "auto", "messages": []})
    unknown_model = http.post(CHAT, json=chat(CHIT_CHAT, model="gpt-4"))
    assert unknown_field.status_code == 400 and unknown_field.json()["error"]["param"] == "temprature"
    assert no_messages.status_code == 400 and no_messages.json()["error"]["type"] == "invalid_request_error"
    assert unknown_model.status_code == 404 and unknown_model.json()["error"]["code"] == "model_not_found"
    assert received(fakes, "llm") == []


def test_an_error_of_the_target_is_passed_on(http, fakes):
    for fake in fakes.values():
        fake.status = 400
    response = http.post(CHAT, json=chat(DEMANDING))
    assert response.status_code == 400 and response.headers["x-route"] == "large"
    assert response.json()["error"]["message"] == "llm-large-a answered 400"
    assert len(received(fakes, "llm")) == 1


# Streams

def test_a_stream_passes_through_byte_for_byte(http, fakes):
    with http.stream("POST", CHAT, json=chat(DEMANDING, stream=True)) as response:
        streamed = b"".join(response.iter_raw())
    assert response.headers["x-route"] == "large"
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [f'data: {{"id": "cmpl-1", "model": "llm-large", "choices": [{{"index": 0, "delta": {{"content": '
              f'"{index} "}}}}]}}\n\n' for index in range(3)]
    assert streamed == ("".join(events) + "data: [DONE]\n\n").encode()


def test_a_stream_the_target_breaks_ends_with_an_openai_error_event(http, fakes):
    fakes["llm-large-a"].stream_breaks = True
    with http.stream("POST", CHAT, json=chat(DEMANDING, stream=True)) as response:
        events = [line for line in response.iter_lines() if line]
    assert len(events) == 5 and events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["error"] == {
        "message": "the large model failed mid-stream", "type": "server_error", "param": None, "code": None}


def test_a_client_leaving_mid_stream_closes_the_targets_stream(http, fakes):
    fakes["llm-large-a"].stream_events = 200
    with http.stream("POST", COMPLETIONS, json={"model": "llm-large", "prompt": "x", "stream": True}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 5
    while fakes["llm-large-a"].abandoned_streams == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fakes["llm-large-a"].abandoned_streams == 1


# Fallback

def test_a_503_falls_back_to_the_other_model(router, http, fakes):
    before = router_metric(router, "router_fallbacks_total", from_route="large", reason="unavailable")
    fakes["llm-large-a"].status = 503
    response = http.post(CHAT, json=chat(DEMANDING))
    streamed = http.post(CHAT, json=chat(DEMANDING, stream=True))
    for each in (response, streamed):
        assert each.status_code == 200
        assert each.headers["x-route"] == "small" and each.headers["x-route-fallback"] == "large:unavailable"
    assert response.json()["model"] == "llm-small"
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert router_metric(router, "router_fallbacks_total", from_route="large", reason="unavailable") == before + 2


def test_a_timeout_falls_back(router, http, fakes):
    fakes["llm-large-a"].delay = REQUEST_SECONDS + 0.5
    response = http.post(COMPLETIONS, json={"model": "auto", "prompt": DEMANDING})
    assert response.status_code == 200 and response.headers["x-route-fallback"] == "large:timeout"


def test_a_chat_streams_role_chunk_is_held_for_its_first_token_and_passed_on_intact(http, fakes):
    fakes["llm-large-a"].opens_with_role = True
    with http.stream("POST", CHAT, json=chat(DEMANDING, stream=True)) as response:
        events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines()
                  if line and line != "data: [DONE]"]
    assert response.headers["x-route"] == "large" and "x-route-fallback" not in response.headers
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [event["choices"][0]["delta"]["content"] for event in events[1:]] == ["0 ", "1 ", "2 "]


@pytest.mark.parametrize("path, echo", [(CHAT, False), (COMPLETIONS, False), (COMPLETIONS, True)],
                         ids=["chat", "completion", "completion-echo"])
def test_a_stream_that_fails_before_its_first_token_falls_back(router, http, fakes, path, echo):
    """The transformer admitted the request (200), then its predictor failed it before any token:
    nothing has reached the client yet (a chat's role chunk and an echoed prompt are held), so the
    other model answers."""
    before = router_metric(router, "router_fallbacks_total", from_route="large", reason="failed")
    fakes["llm-large-a"].fails_before_first_token = True
    body = chat(DEMANDING, stream=True) if path == CHAT else {"model": "auto", "prompt": DEMANDING, "stream": True,
                                                              "echo": echo}
    with http.stream("POST", path, json=body) as response:
        text = response.read().decode()
    assert response.status_code == 200 and response.headers["x-route"] == "small"
    assert response.headers["x-route-fallback"] == "large:failed"
    assert '"error"' not in text and '"llm-small"' in text and text.endswith("data: [DONE]\n\n")
    # The client sees the prompt echoed once, by the model that answered.
    assert text.count(json.dumps(DEMANDING)) == (1 if echo else 0)
    assert router_metric(router, "router_fallbacks_total", from_route="large", reason="failed") == before + 1


def test_an_echoed_prompt_is_held_for_the_first_token_and_passed_on_intact(http, fakes):
    body = {"model": "llm-large", "prompt": DEMANDING, "stream": True, "echo": True}
    with http.stream("POST", COMPLETIONS, json=body) as response:
        events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines()
                  if line and line != "data: [DONE]"]
    assert events[0]["choices"][0]["text"] == DEMANDING
    assert [event["choices"][0]["text"] for event in events[1:]] == ["0 ", "1 ", "2 "]


def test_a_named_models_stream_that_fails_before_its_first_token_ends_as_it_did(http, fakes):
    fakes["llm-large-a"].fails_before_first_token = True
    with http.stream("POST", CHAT, json=chat(DEMANDING, model="llm-large", stream=True)) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert response.status_code == 200 and response.headers["x-route"] == "large"
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[1])["error"]["message"] == "the request timed out in the queue"
    assert events[2:] == ["[DONE]"]
    assert received(fakes, "llm-small") == []


def test_a_named_model_does_not_fall_back(http, fakes):
    fakes["llm-large-a"].status = 503
    response = http.post(CHAT, json=chat(CHIT_CHAT, model="llm-large"))
    assert response.status_code == 503 and response.headers["x-route"] == "large"
    assert response.json()["error"]["message"] == "llm-large-a answered 503"
    assert received(fakes, "llm-small") == []


def test_when_both_models_fail_the_answer_is_503_with_retry_after(http, fakes):
    for fake in fakes.values():
        fake.status = 503
    response = http.post(CHAT, json=chat(CHIT_CHAT, stream=True))
    assert response.status_code == 503 and response.headers["retry-after"]
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["message"].startswith("no model could answer: llm-small")


@pytest.fixture(scope="module")
def router_with_a_dead_model(fakes, tmp_path_factory) -> Iterator[Server]:
    """A router whose small model listens nowhere: connections to it are refused."""
    directory = tmp_path_factory.mktemp("dead-small")
    config = edge_config(directory / "router.yaml", [f"http://127.0.0.1:{free_port()}"], [fakes["llm-large-a"].url])
    server = start_router(config, directory)
    yield server
    assert server.stop() == 0, server.log()[-3000:]


def test_a_refused_connection_falls_back(router_with_a_dead_model, fakes):
    for fake in fakes.values():
        fake.reset()
    with httpx.Client(base_url=router_with_a_dead_model.url, timeout=30) as client:
        auto = client.post(CHAT, json=chat(CHIT_CHAT))
        named = client.post(CHAT, json=chat(CHIT_CHAT, model="llm-small"))
    assert auto.status_code == 200 and auto.headers["x-route"] == "large"
    assert auto.headers["x-route-fallback"] == "small:down"
    assert named.status_code == 503 and named.headers["retry-after"]
    assert "the small model cannot be reached" in named.json()["error"]["message"]


# The cascade

def test_an_unsure_small_answer_is_escalated(router, http, fakes):
    before = router_metric(router, "router_escalations_total", reason="low_confidence")
    for name in ("llm-small-a", "llm-small-b"):
        fakes[name].token_logprobs = [-0.1, -4.0, -0.2]
    response = http.post(CHAT, json=chat(CHIT_CHAT))
    assert response.headers["x-route"] == "large" and response.headers["x-route-escalated"] == "low_confidence"
    assert response.json()["choices"][0]["message"]["content"] == "llm-large-a answers"
    # The small model was asked for logprobs, the large one gets the request as the client sent it.
    [to_small] = received(fakes, "llm-small")
    [to_large] = received(fakes, "llm-large")
    assert to_small["body"]["logprobs"] is True and "logprobs" not in to_large["body"]
    assert router_metric(router, "router_escalations_total", reason="low_confidence") == before + 1


def test_a_confident_small_answer_stays_and_loses_the_logprobs_it_was_asked_for(http, fakes):
    response = http.post(COMPLETIONS, json={"model": "auto", "prompt": CHIT_CHAT})
    [to_small] = received(fakes, "llm-small")
    assert to_small["body"]["logprobs"] == 0
    assert response.headers["x-route"] == "small" and "x-route-escalated" not in response.headers
    assert response.json()["choices"][0]["logprobs"] is None
    asked = http.post(COMPLETIONS, json={"model": "auto", "prompt": CHIT_CHAT, "logprobs": 1})
    assert asked.json()["choices"][0]["logprobs"]["token_logprobs"] == [-0.1, -0.2]


def test_a_cut_short_answer_is_escalated_but_kept_if_the_large_model_fails(http, fakes):
    for name in ("llm-small-a", "llm-small-b"):
        fakes[name].finish_reason = "length"
    fakes["llm-large-a"].status = 503
    response = http.post(CHAT, json=chat(CHIT_CHAT))
    assert response.status_code == 200 and response.headers["x-route"] == "small"
    assert response.headers["x-route-escalated"] == "length"
    assert response.headers["x-route-fallback"] == "large:unavailable"
    assert response.json()["choices"][0]["logprobs"] is None


def test_an_answer_cut_at_the_clients_own_max_tokens_is_not_escalated(http, fakes):
    """The large model would be cut at the same length: the small answer (2 tokens) stands."""
    for name in ("llm-small-a", "llm-small-b"):
        fakes[name].finish_reason = "length"
    response = http.post(CHAT, json=chat(CHIT_CHAT, max_tokens=2))
    assert response.status_code == 200 and response.headers["x-route"] == "small"
    assert "x-route-escalated" not in response.headers
    assert received(fakes, "llm-large") == []
    longer = http.post(COMPLETIONS, json={"model": "auto", "prompt": CHIT_CHAT, "max_tokens": 3})
    assert longer.headers["x-route-escalated"] == "length"


def test_streams_and_named_models_are_not_cascaded(http, fakes):
    for name in ("llm-small-a", "llm-small-b"):
        fakes[name].token_logprobs = [-9.0]
    streamed = http.post(CHAT, json=chat(CHIT_CHAT, stream=True))
    named = http.post(CHAT, json=chat(CHIT_CHAT, model="llm-small"))
    assert streamed.headers["x-route"] == named.headers["x-route"] == "small"
    assert received(fakes, "llm-large") == []


# Replicas

def wait_for_polls() -> None:
    time.sleep(3 * METRICS_INTERVAL)


def served_by(fakes: dict[str, FakeTransformer]) -> list[str]:
    return [name for name in ("llm-small-a", "llm-small-b") for _ in fakes[name].received]


def test_the_least_loaded_replica_serves(http, fakes):
    fakes["llm-small-a"].waiting, fakes["llm-small-b"].waiting = 4, 0
    wait_for_polls()
    for _ in range(3):
        http.post(CHAT, json=chat(CHIT_CHAT, stream=True))
    assert served_by(fakes) == ["llm-small-b"] * 3
    fakes["llm-small-a"].received.clear(), fakes["llm-small-b"].received.clear()
    fakes["llm-small-a"].waiting = fakes["llm-small-b"].waiting = 1
    fakes["llm-small-a"].kv_cache_usage, fakes["llm-small-b"].kv_cache_usage = 0.2, 0.7
    wait_for_polls()
    for _ in range(3):
        http.post(CHAT, json=chat(CHIT_CHAT, stream=True))
    assert served_by(fakes) == ["llm-small-a"] * 3


def test_equally_loaded_replicas_take_turns(http, fakes):
    fakes["llm-small-a"].waiting = fakes["llm-small-b"].waiting = 0
    wait_for_polls()
    for _ in range(4):
        http.post(CHAT, json=chat(CHIT_CHAT, stream=True))
    assert sorted(served_by(fakes)) == ["llm-small-a"] * 2 + ["llm-small-b"] * 2


def test_an_overloaded_replica_hands_over_to_another_of_its_target(http, fakes):
    fakes["llm-small-a"].waiting, fakes["llm-small-b"].waiting = 0, 3
    fakes["llm-small-a"].status = 503
    wait_for_polls()
    response = http.post(CHAT, json=chat(CHIT_CHAT, stream=True))
    assert response.status_code == 200 and response.headers["x-route"] == "small"
    assert "x-route-fallback" not in response.headers
    assert served_by(fakes) == ["llm-small-a", "llm-small-b"]


def test_routing_latency_is_measured(router, http):
    http.post(CHAT, json=chat(CHIT_CHAT, stream=True))
    assert router_metric(router, "router_routing_latency_seconds_count") >= 1
    assert router_metric(router, "router_requests_total", route="small", decided_by="policy") >= 1



def test_tokenize_goes_to_the_named_models_transformer_and_auto_is_refused(http, fakes):
    response = http.post("/tokenize", json={"model": "llm-large", "prompt": "hi"})
    assert response.status_code == 200 and response.headers["x-route"] == "large"
    assert response.json() == {"count": 2, "max_model_len": 64, "tokens": [104, 105]}
    [sent] = received(fakes, "llm-large")
    assert sent["path"] == "/tokenize" and sent["body"] == {"model": "llm-large", "prompt": "hi"}
    for body in ({"model": "auto", "prompt": "hi"}, {"prompt": "hi"}):
        refused = http.post("/tokenize", json=body)
        assert refused.status_code == 400 and "name the model (llm-small or llm-large)" in refused.text
    assert http.post("/tokenize", json={"model": "gpt-4", "prompt": "hi"}).status_code == 404
    for name, fake in fakes.items():
        if name.startswith("llm-small"):
            fake.status = 503
    # Each replica is tried; then the named model's own 503, since no other model may answer.
    assert http.post("/tokenize", json={"model": "llm-small", "prompt": "hi"}).status_code == 503
    assert len(received(fakes, "llm-small")) == len([name for name in fakes if name.startswith("llm-small")])
    assert received(fakes, "llm-large") == [sent]


def test_an_error_that_quotes_half_a_surrogate_pair_is_still_answered(http):
    # The token routes read JSON with Python's parser, which lets "\ud800" into the model name;
    # the 404 that quotes it had no UTF-8 form and failed as a 500.
    body = json.dumps({"model": "llm-\ud800", "tokens": [1]}).encode()
    response = http.post("/detokenize", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 404
    assert "llm-\ufffd" in response.json()["error"]["message"]


# Circuit breakers

FAILURE_THRESHOLD = 2
OPEN_SECONDS = 3.0


@pytest.fixture(scope="module")
def router_with_breakers(fakes, tmp_path_factory) -> Iterator[Server]:
    """A router with one replica per target whose breaker opens on 2 failures in a row, for 3 s."""
    directory = tmp_path_factory.mktemp("breakers")
    breakers = {"failure_threshold": FAILURE_THRESHOLD, "open_seconds": OPEN_SECONDS, "max_open_seconds": 10}
    config = edge_config(directory / "router.yaml", [fakes["llm-small-a"].url], [fakes["llm-large-a"].url], breakers)
    server = start_router(config, directory)
    yield server
    assert server.stop() == 0, server.log()[-3000:]


def breaker_metric(router: Server, name: str, replica: FakeTransformer, **labels: str) -> float:
    return router_metric(router, name, replica=replica.url, **labels)


def test_a_failing_replicas_breaker_opens_sends_auto_to_the_fallback_and_a_probe_closes_it(
        router_with_breakers, fakes):
    small = fakes["llm-small-a"]
    with edge_client(router_with_breakers.url, fakes) as http:
        small.status = 503
        tripping = [http.post(CHAT, json=chat(CHIT_CHAT)) for _ in range(FAILURE_THRESHOLD)]
        assert [response.headers["x-route-fallback"] for response in tripping] == ["small:unavailable"] * 2
        assert breaker_metric(router_with_breakers, "router_circuit_breaker_state", small, target="small") == 2
        # Open: no request reaches the replica, the fallback answers at once and says why.
        held_back = [http.post(CHAT, json=chat(CHIT_CHAT)) for _ in range(3)]
        assert all(response.status_code == 200 and response.headers["x-route"] == "large" and
                   response.headers["x-route-fallback"] == "small:circuit_open" for response in held_back)
        assert len(small.received) == FAILURE_THRESHOLD
        # The replica recovers; once open_seconds have passed, a probe goes through and closes it.
        small.status = 200
        time.sleep(OPEN_SECONDS)
        probe = http.post(CHAT, json=chat(CHIT_CHAT))
        assert probe.headers["x-route"] == "small" and "x-route-fallback" not in probe.headers
        assert len(small.received) == FAILURE_THRESHOLD + 1
    assert breaker_metric(router_with_breakers, "router_circuit_breaker_state", small, target="small") == 0
    assert [breaker_metric(router_with_breakers, "router_circuit_breaker_transitions_total", small, to=state)
            for state in ("open", "half_open", "closed")] == [1, 1, 1]


def test_a_named_model_whose_breakers_are_open_gets_a_fast_503_retry_after_the_time_left(
        router_with_breakers, fakes):
    large = fakes["llm-large-a"]
    with edge_client(router_with_breakers.url, fakes) as http:
        large.status = 503
        tripped = time.monotonic()
        for _ in range(FAILURE_THRESHOLD):
            assert http.post(CHAT, json=chat(CHIT_CHAT, model="llm-large")).status_code == 503
        refused = http.post(CHAT, json=chat(CHIT_CHAT, model="llm-large"))
        since_tripped = time.monotonic() - tripped
    assert refused.status_code == 503 and len(large.received) == FAILURE_THRESHOLD
    assert refused.elapsed.total_seconds() < 1
    # What is left of the open time, rounded up: 3 s unless the machine took a second or more.
    assert math.ceil(OPEN_SECONDS - since_tripped) <= int(refused.headers["retry-after"]) <= math.ceil(OPEN_SECONDS)
    assert "the circuit breaker of every llm-large replica is open" in refused.json()["error"]["message"]
    assert breaker_metric(router_with_breakers, "router_circuit_breaker_state", large, target="large") == 2


def test_when_both_targets_breakers_are_open_auto_gets_a_fast_503_retry_after_the_sooner(
        router_with_breakers, fakes):
    with edge_client(router_with_breakers.url, fakes) as http:
        for fake in fakes.values():
            fake.status = 503
        for model in ("llm-small", "llm-large"):
            for _ in range(FAILURE_THRESHOLD):
                http.post(CHAT, json=chat(CHIT_CHAT, model=model))
        tried = len(received(fakes, "llm"))
        refused = http.post(CHAT, json=chat(CHIT_CHAT))
    assert refused.status_code == 503 and 1 <= int(refused.headers["retry-after"]) <= math.ceil(OPEN_SECONDS)
    assert refused.json()["error"]["message"].startswith("no model could answer: the circuit breaker of every "
                                                         "llm-small replica is open")
    assert len(received(fakes, "llm")) == tried
