"""The generate extension through a real server: /generate, /generate_stream as server-sent
events, and a client leaving mid-stream aborts its request and frees its KV blocks."""

from __future__ import annotations

import time

import httpx

from runtime.schemas import GenerateStreamEvent

from .conftest import MODEL_NAME, PROMPTS, REFERENCE_MAX_TOKENS, parse_sse
from .priority_order import PriorityProbe, answer_order

GENERATE = f"/v2/models/{MODEL_NAME}/generate"
GENERATE_STREAM = f"/v2/models/{MODEL_NAME}/generate_stream"
GREEDY = {"max_tokens": REFERENCE_MAX_TOKENS, "temperature": 0, "ignore_eos": True}


def test_generate(http, reference_outputs):
    response = http.post(GENERATE, json={"input_ids": PROMPTS[11], "parameters": GREEDY})
    assert response.status_code == 200, response.text
    assert response.json() == {"model_name": MODEL_NAME, "output_ids": reference_outputs[11],
                               "finish_reason": "length"}


def test_generate_with_logprobs_and_defaults(http):
    response = http.post(GENERATE, json={"input_ids": [5, 6, 7], "parameters": {"max_tokens": 4, "logprobs": True}})
    body = response.json()
    assert len(body["output_ids"]) == len(body["logprobs"]) <= 4
    assert http.post(GENERATE, json={"input_ids": [5, 6, 7]}).status_code == 200


def test_a_logit_bias_reaches_the_engine_over_each_protocol(http):
    """As a JSON object on the generate extension, as "token:bias" text in v2 parameters."""
    forced = [77] * 4
    parameters = {"max_tokens": 4, "temperature": 0, "ignore_eos": True}
    generated = http.post(GENERATE, json={"input_ids": [5, 6, 7], "parameters": {**parameters,
                                                                               "logit_bias": {"77": 100}}})
    assert generated.json()["output_ids"] == forced
    infer = {"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [5, 6, 7]}],
             "parameters": {**parameters, "logit_bias": "77:100, 78:-5"}}
    outputs = http.post(f"/v2/models/{MODEL_NAME}/infer", json=infer).json()["outputs"]
    assert next(output["data"] for output in outputs if output["name"] == "output_ids") == forced


def test_generate_stream_sends_one_event_per_step(http, reference_outputs):
    body = {"input_ids": PROMPTS[12], "parameters": GREEDY}
    with http.stream("POST", GENERATE_STREAM, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(list(response.iter_lines()))
    assert len(events) == REFERENCE_MAX_TOKENS
    assert all(event["model_name"] == MODEL_NAME for event in events)
    assert [token for event in events for token in event["output_ids"]] == reference_outputs[12]
    assert [event["finish_reason"] for event in events] == [None] * (len(events) - 1) + ["length"]
    # Built as plain dicts: exactly the documented event model's dump.
    assert all(GenerateStreamEvent.model_validate(event).model_dump(exclude_unset=True) == event for event in events)


def test_generate_stream_events_carry_logprobs_when_asked(http):
    body = {"input_ids": [5, 6, 7], "parameters": {"max_tokens": 3, "logprobs": True, "top_logprobs": 2}}
    with http.stream("POST", GENERATE_STREAM, json=body) as response:
        events = parse_sse(list(response.iter_lines()))
    for event in events:
        assert len(event["logprobs"]) == len(event["top_logprobs"]) == len(event["output_ids"])
        assert all(len(row) == 2 for row in event["top_logprobs"])
        assert GenerateStreamEvent.model_validate(event).model_dump(mode="json", exclude_unset=True) == event


def test_generate_stream_refuses_bad_input_before_streaming(http):
    response = http.post(GENERATE_STREAM, json={"input_ids": [1, 2], "parameters": {"temperature": -1}})
    assert response.status_code == 400
    assert "temperature" in response.json()["error"]


def test_unknown_model_is_404(http):
    for route in ("generate", "generate_stream"):
        response = http.post(f"/v2/models/nobody/{route}", json={"input_ids": [1, 2]})
        assert response.status_code == 404
        assert "nobody" in response.json()["error"]


def test_client_leaving_mid_stream_aborts_the_request(server, http):
    body = {"input_ids": [3, 4, 5, 6], "parameters": {"max_tokens": 1500, "ignore_eos": True}}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", GENERATE_STREAM, json=body) as response:
            lines = response.iter_lines()
            events = []
            while len(events) < 2:
                events += parse_sse([next(lines)])
            assert server.metric("vllm:num_requests_running") == 1
            assert server.metric("vllm:kv_cache_usage_perc") > 0
        # Leaving the `with` closes the connection mid-stream.
    closed = time.monotonic()
    assert server.wait_for_metric("vllm:num_requests_running", lambda value: value == 0, timeout=2.0) == 0
    assert server.wait_for_metric("vllm:kv_cache_usage_perc", lambda value: value == 0, timeout=2.0) == 0
    assert time.monotonic() - closed < 2.5
    assert http.get(f"/v2/models/{MODEL_NAME}/ready").status_code == 200


def test_client_leaving_a_non_streamed_request_aborts_it(server):
    body = {"input_ids": [3, 4, 5, 6], "parameters": {"max_tokens": 1500, "ignore_eos": True}}
    with httpx.Client(base_url=server.url, timeout=0.5) as client:
        try:
            client.post(GENERATE, json=body)
        except httpx.ReadTimeout:
            pass  # the client gives up and closes its connection
    assert server.wait_for_metric("vllm:num_requests_running", lambda value: value == 0, timeout=2.0) == 0
    assert server.wait_for_metric("vllm:kv_cache_usage_perc", lambda value: value == 0, timeout=2.0) == 0


async def test_a_lower_priority_value_is_admitted_first(launch_server):
    """vLLM's `priority` (lower first) reaches the engine's waiting queue: with one batch slot,
    the request queued later at priority 0 is answered before the one queued earlier at 5."""
    server = launch_server("--max_num_seqs", "1")
    probe = PriorityProbe(server.url, GENERATE_STREAM,
                          {"input_ids": [1, 2, 3], "parameters": {"max_tokens": 1500, "ignore_eos": True}},
                          GENERATE, lambda priority: {"input_ids": [4, 5], "parameters": {
                              "max_tokens": 2, "ignore_eos": True, "priority": priority}})
    assert await answer_order(server, probe) == [0, 5]
