"""Errors as a client sees them: 400 with what was wrong, 404, 503 with Retry-After on a full
queue, 504 past the request timeout (the request aborted), and the server healthy after each."""

from __future__ import annotations

import asyncio
import contextlib
import re

import grpc
import httpx
import pytest

from .conftest import MODEL_NAME, grpc_infer

INFER = f"/v2/models/{MODEL_NAME}/infer"
PREDICT = f"/v1/models/{MODEL_NAME}:predict"
GENERATE = f"/v2/models/{MODEL_NAME}/generate"
GENERATE_STREAM = f"/v2/models/{MODEL_NAME}/generate_stream"
VOCAB_SIZE = 8192


def infer_body(name="input_ids", datatype="INT64", data=None, shape=None, parameters=None) -> dict:
    data = [[1, 2, 3]] if data is None else data
    shape = shape or [len(data), len(data[0]) if data else 0]
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}],
            "parameters": parameters or {"max_tokens": 2}}


BAD_REQUESTS = [
    # (route, body, words the error must contain)
    (INFER, infer_body(name="tokens"), ["tokens", "input_ids"]),
    (INFER, infer_body(datatype="FP32", data=[[1.0, 2.0]]), ["input_ids", "INT64", "FP32"]),
    (INFER, infer_body(data=[[]], shape=[1, 0]), ["empty"]),
    (INFER, infer_body(data=[[1, VOCAB_SIZE + 5]]), [str(VOCAB_SIZE + 5), "vocabulary"]),
    (INFER, infer_body(data=[[1] * 3000]), ["max_model_len"]),
    # Past INT64: numpy's OverflowError, which was a 500.
    (INFER, infer_body(data=[[1, 2**64]]), ["input_ids", "does not match", "INT64"]),
    (INFER, infer_body(parameters={"max_tokens": 0}), ["max_tokens", ">= 1"]),
    (INFER, infer_body(parameters={"temperature": -1}), ["temperature", ">= 0"]),
    (INFER, infer_body(parameters={"top_p": 1.5}), ["top_p", "(0, 1]"]),
    (INFER, infer_body(parameters={"max_tokenz": 4}), ["max_tokenz"]),
    (INFER, {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                        {"name": "input_lengths", "shape": [1], "datatype": "INT64", "data": [5]}]},
     ["input_lengths", "[0, 2]"]),
    (PREDICT, {"instances": [{"input_ids": [1, 2], "max_tokens": 0}]}, ["max_tokens"]),
    (PREDICT, {"instances": [{"input_ids": [1, 2], "top_p": 1.5}]}, ["top_p"]),
    (PREDICT, {"instances": [{"input_ids": []}]}, ["empty"]),
    (PREDICT, {"instances": [{"input_ids": [1, 2.5]}]}, ["input_ids"]),
    (PREDICT, {"instances": []}, ["instances"]),
    (GENERATE, {"input_ids": [1, VOCAB_SIZE]}, ["vocabulary"]),
    (GENERATE, {"input_ids": [1, 2], "parameters": {"temperature": -1}}, ["temperature"]),
    (GENERATE, {"input_ids": [1, 2], "parameters": {"top_p": 1.5}}, ["top_p"]),
    (GENERATE, {"input_ids": [1, 2], "parameters": {"max_tokens": 0}}, ["max_tokens"]),
    (GENERATE, {"input_ids": [1] * 3000}, ["max_model_len"]),
    (GENERATE, {"input_ids": [1, 2], "parameters": {"stop_token_ids": "x"}}, ["stop_token_ids"]),
    (GENERATE, {"prompt": [1, 2]}, ["input_ids"]),
    (GENERATE, {"input_ids": [1, 2], "parameters": {"presence_penalty": 2.5}}, ["presence_penalty", "[-2, 2]"]),
    (GENERATE, {"input_ids": [1, 2], "parameters": {"repetition_penalty": 0}}, ["repetition_penalty", "[0.01, 10]"]),
    (GENERATE, {"input_ids": [1, 2], "parameters": {"logit_bias": {"9000": 1}}}, ["logit_bias", "9000", "vocabulary"]),
    (GENERATE, {"input_ids": [1, 2], "parameters": {"logit_bias": {"5": 200}}}, ["logit_bias", "[-100, 100]"]),
    (INFER, infer_body(parameters={"logit_bias": "5=1"}), ["logit_bias", "token:bias"]),
    (INFER, infer_body(parameters={"min_p": "1.5"}), ["min_p", "[0, 1]"]),
]


@pytest.mark.parametrize("route, body, words", BAD_REQUESTS)
def test_bad_input_is_400_with_a_useful_message(http, route, body, words):
    response = http.post(route, json=body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message
    assert "Traceback" not in message
    assert http.get(f"/v2/models/{MODEL_NAME}/ready").status_code == 200


@pytest.mark.parametrize("route", [INFER, PREDICT, GENERATE, GENERATE_STREAM])
def test_malformed_json_is_400(http, route):
    response = http.post(route, content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "JSON" in response.json()["error"] or "format" in response.json()["error"]
    assert http.get(f"/v2/models/{MODEL_NAME}/ready").status_code == 200


def test_an_error_quoting_half_a_surrogate_pair_is_still_a_400(http):
    # JSON's "\ud800" decodes to a str with no UTF-8 form; KServe's own handler wrote the
    # InvalidInput message that quotes it as it was, and the 400 became a 500.
    body = b'{"inputs":[{"name":"input_ids","shape":[1,2],"datatype":"INT\\ud80064","data":[1,2]}]}'
    response = http.post(INFER, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "INT\ufffd64" in response.json()["error"]


def test_unknown_model_is_404(http):
    assert http.post("/v2/models/nobody/infer", json=infer_body()).status_code == 404
    assert http.post("/v1/models/nobody:predict", json={"instances": [{"input_ids": [1]}]}).status_code == 404
    assert http.get("/v2/models/nobody/ready").status_code == 404


async def test_full_queue_is_503_with_retry_after(launch_server):
    server = launch_server("--max_queue", "1", "--max_num_seqs", "1")
    long = {"input_ids": [1, 2, 3], "parameters": {"max_tokens": 1500, "ignore_eos": True}}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        async with client.stream("POST", GENERATE_STREAM, json=long) as running:
            lines = running.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass
            waiting = asyncio.create_task(client.post(GENERATE, json=long))
            assert await asyncio.to_thread(
                server.wait_for_metric, "vllm:num_requests_waiting", lambda value: value == 1) == 1
            refused = await client.post(GENERATE, json={"input_ids": [4, 5], "parameters": {"max_tokens": 2}})
            infer_refused = await client.post(INFER, json=infer_body())
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["error"]
    assert infer_refused.status_code == 503 and "retry-after" in infer_refused.headers
    # The running stream and the queued request left: both aborted, the server serves again.
    assert server.wait_for_metric("vllm:num_requests_running", lambda value: value == 0) == 0
    assert server.wait_for_metric("vllm:num_requests_waiting", lambda value: value == 0) == 0
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post(GENERATE, json={"input_ids": [4, 5], "parameters": {"max_tokens": 2}}).status_code == 200


async def test_request_timeout_is_504_and_aborts(launch_server):
    server = launch_server("--request_timeout", "0.5")
    with pytest.raises(grpc.aio.AioRpcError) as over_grpc:
        await grpc_infer(server.grpc_url, {"max_tokens": 1900, "ignore_eos": True})
    assert over_grpc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "0.5 s" in over_grpc.value.details()
    long = {"input_ids": [1, 2, 3], "parameters": {"max_tokens": 1900, "ignore_eos": True}}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(GENERATE, json=long)
        assert response.status_code == 504
        assert "timeout of 0.5 s" in response.json()["error"]
        with client.stream("POST", GENERATE_STREAM, json=long) as stream:
            last = [line for line in stream.iter_lines() if line.startswith("data: ")][-1]
        assert "timeout" in last
        # The abort reaches the engine thread a moment after the response.
        assert server.wait_for_metric("vllm:num_requests_running", lambda value: value == 0, timeout=2.0) == 0
        assert server.wait_for_metric("vllm:kv_cache_usage_perc", lambda value: value == 0, timeout=2.0) == 0
        assert client.post(GENERATE, json={"input_ids": [1, 2], "parameters": {"max_tokens": 2}}).status_code == 200


async def test_a_400_and_a_503_are_one_log_line_each_without_a_traceback(launch_server):
    # KServe's gRPC interceptor logged each with its stack trace; REST errors went out unformatted.
    server = launch_server("--max_queue", "1", "--max_num_seqs", "1")
    long = {"input_ids": [1, 2, 3], "parameters": {"max_tokens": 1500, "ignore_eos": True}}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        bad = await client.post(INFER, json=infer_body(parameters={"max_tokens": 0}))
        with pytest.raises(grpc.aio.AioRpcError) as bad_over_grpc:
            await grpc_infer(server.grpc_url, {"max_tokens": 0})
        async with client.stream("POST", GENERATE_STREAM, json=long) as running:
            lines = running.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass
            # The only slot is taken and the only place in the queue too: refused.
            waiting = asyncio.create_task(client.post(GENERATE, json=long))
            assert await asyncio.to_thread(
                server.wait_for_metric, "vllm:num_requests_waiting", lambda value: value == 1) == 1
            full = await client.post(INFER, json=infer_body())
            with pytest.raises(grpc.aio.AioRpcError) as full_over_grpc:
                await grpc_infer(server.grpc_url, {"max_tokens": 2})
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
    assert bad.status_code == 400 and bad_over_grpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert full.status_code == 503 and full_over_grpc.value.code() == grpc.StatusCode.UNAVAILABLE
    server.stop()
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    for message in (bad.json()["error"], full.json()["error"]):
        lines = [line for line in log.splitlines() if message in line]
        # One line from our REST handler, one from KServe's gRPC interceptor per attempt (KServe's
        # client retries UNAVAILABLE), each in the servers' format (time, pid, logger), a warning.
        assert sum(" serving.errors " in line for line in lines) == 1, lines
        assert any(" kserve " in line and "grpc_method" in line for line in lines), lines
        assert all(re.match(r"\d{4}-\d\d-\d\d [\d:.]+ \d+ \S+ WARNING ", line) for line in lines), lines


def test_no_library_deprecation_warning_reaches_the_log(server, http):
    # FastAPI's ORJSONResponse, which KServe answers with, warned at the first request of each kind.
    assert http.get(f"/v2/models/{MODEL_NAME}/ready").status_code == 200
    assert http.post(PREDICT, json={"instances": [{"input_ids": [1, 2], "max_tokens": 2}]}).status_code == 200
    assert http.post(INFER, json=infer_body()).status_code == 200
    assert "DeprecationWarning" not in server.log(), server.log()[-3000:]
