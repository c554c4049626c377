"""/metrics carries vLLM's metric names, labelled model_name, and they move with traffic."""

from __future__ import annotations

import re

import httpx
import pytest

from runtime.engine.startup import PHASES

from .conftest import MODEL_NAME, PROMPTS, metric_names, parse_sse

EXPECTED = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket", "vllm:request_queue_time_seconds_bucket",
    "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:request_success_total",
}


def test_metric_names_are_present(http):
    http.post(f"/v2/models/{MODEL_NAME}/generate", json={"input_ids": [1, 2], "parameters": {"max_tokens": 2}})
    text = http.get("/metrics").text
    assert EXPECTED <= metric_names(text)
    for line in text.splitlines():
        if line.startswith("vllm:"):
            assert f'model_name="{MODEL_NAME}"' in line


def test_counters_and_histograms_move(server, http):
    before = {name: server.metric(name) for name in (
        "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count", "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count", "vllm:prefix_cache_queries_total")}
    success_before = server.metric("vllm:request_success_total", 'finished_reason="length"')
    prompt = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28]
    body = {"input_ids": prompt, "parameters": {"max_tokens": 5, "ignore_eos": True}}
    for _ in range(2):
        assert http.post(f"/v2/models/{MODEL_NAME}/generate", json=body).status_code == 200
    after = {name: server.metric(name) for name in before}
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == 2 * len(prompt)
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 10
    assert after["vllm:time_to_first_token_seconds_count"] - before["vllm:time_to_first_token_seconds_count"] == 2
    assert after["vllm:inter_token_latency_seconds_count"] - before["vllm:inter_token_latency_seconds_count"] == 8
    assert after["vllm:e2e_request_latency_seconds_count"] - before["vllm:e2e_request_latency_seconds_count"] == 2
    assert after["vllm:request_queue_time_seconds_count"] - before["vllm:request_queue_time_seconds_count"] == 2
    assert after["vllm:prefix_cache_queries_total"] > before["vllm:prefix_cache_queries_total"]
    assert server.metric("vllm:request_success_total", 'finished_reason="length"') - success_before == 2
    assert server.metric("vllm:num_requests_running") == 0


def test_startup_phases_are_logged_and_exported(server, http):
    """At ready the predictor logs where its start-up went, one line with every phase, and
    exports the same split as kserve_llm:startup_seconds{phase}, adding up to the whole."""
    summary = re.search(r"startup: ready in ([\d.]+)s: (.*)$", server.log(), re.MULTILINE)
    assert summary is not None
    logged = {name: float(seconds) for name, seconds in re.findall(r"(\w+) ([\d.]+)s", summary.group(2))}
    assert list(logged) == [*PHASES, "other"]
    assert sum(logged.values()) == pytest.approx(float(summary.group(1)), abs=0.01)
    exported = {phase: server.metric("kserve_llm:startup_seconds", f'phase="{phase}"') for phase in logged}
    assert exported == pytest.approx(logged, abs=0.001)
    # Ran here: the checkpoint loaded, the engine warmed up (the suite turns the C++ kernels off).
    assert exported["imports"] > 0 and exported["weight_load"] > 0 and exported["warm_up"] > 0
    assert exported["kernels"] == 0


def test_speculative_decoding_flags_and_counters(launch_server, demo_model_dir, reference_outputs):
    """--speculative_model with the served model as its own draft: the output is the engine's
    without it, streamed a whole accepted run per event; every draft token is accepted, and
    vLLM's spec_decode counters say so."""
    server = launch_server("--speculative_model", str(demo_model_dir), "--num_speculative_tokens", "3")
    body = {"input_ids": PROMPTS[11], "parameters": {"max_tokens": 9, "ignore_eos": True, "temperature": 0}}
    response = httpx.post(f"{server.url}/v2/models/{MODEL_NAME}/generate", json=body, timeout=60)
    assert response.status_code == 200
    assert response.json()["output_ids"] == reference_outputs[11][:9]
    # The prefill's token, then two steps of 3 drafts and a bonus each.
    assert server.metric("vllm:spec_decode_num_drafts_total") == 2
    assert server.metric("vllm:spec_decode_num_draft_tokens_total") == 6
    assert server.metric("vllm:spec_decode_num_accepted_tokens_total") == 6
    with httpx.stream("POST", f"{server.url}/v2/models/{MODEL_NAME}/generate_stream", json=body, timeout=60) as stream:
        events = parse_sse(list(stream.iter_lines()))
    assert [len(event["output_ids"]) for event in events] == [1, 4, 4]
    assert [token for event in events for token in event["output_ids"]] == reference_outputs[11][:9]
    assert "speculative=" in server.log()
