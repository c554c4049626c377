"""LLMModel through a real server: v2 infer over REST and gRPC, v1 predict (plain and streamed),
metadata and readiness, and greedy tokens equal to LLMEngine.generate, alone and concurrently."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest

from .conftest import MODEL_NAME, PROMPTS, REFERENCE_MAX_TOKENS

GREEDY = {"max_tokens": REFERENCE_MAX_TOKENS, "temperature": 0, "ignore_eos": True}
INFER = f"/v2/models/{MODEL_NAME}/infer"
PREDICT = f"/v1/models/{MODEL_NAME}:predict"


def v2_body(prompts: list[list[int]], parameters: dict, with_lengths: bool = True) -> dict:
    width = max(len(prompt) for prompt in prompts)
    padded = [prompt + [0] * (width - len(prompt)) for prompt in prompts]
    inputs = [{"name": "input_ids", "shape": [len(prompts), width], "datatype": "INT64", "data": padded}]
    if with_lengths:
        inputs.append({"name": "input_lengths", "shape": [len(prompts)], "datatype": "INT64",
                       "data": [len(prompt) for prompt in prompts]})
    return {"inputs": inputs, "parameters": parameters}


def outputs_by_name(response: dict) -> dict[str, dict]:
    return {output["name"]: output for output in response["outputs"]}


def unpad(ids: list[int], width: int, lengths: list[int]) -> list[list[int]]:
    rows = [ids[row * width:(row + 1) * width] for row in range(len(lengths))]
    return [row[:length] for row, length in zip(rows, lengths)]


def test_v2_rest_infer_single_prompt(http, reference_outputs):
    response = http.post(INFER, json=v2_body([PROMPTS[0]], GREEDY, with_lengths=False))
    assert response.status_code == 200, response.text
    outputs = outputs_by_name(response.json())
    assert outputs["output_ids"]["datatype"] == "INT64"
    assert outputs["output_ids"]["shape"] == [1, REFERENCE_MAX_TOKENS]
    assert outputs["output_ids"]["data"] == reference_outputs[0]
    assert outputs["output_lengths"]["data"] == [REFERENCE_MAX_TOKENS]
    assert outputs["finish_reason"] == {**outputs["finish_reason"], "datatype": "BYTES", "data": ["length"]}
    assert "logprobs" not in outputs


def test_v2_rest_infer_batch_with_lengths_and_logprobs(http, reference_outputs):
    prompts = PROMPTS[1:4]  # 4, 5 and 6 tokens: right-padded to 6
    response = http.post(INFER, json=v2_body(prompts, {**GREEDY, "logprobs": True}))
    assert response.status_code == 200, response.text
    outputs = outputs_by_name(response.json())
    width = outputs["output_ids"]["shape"][1]
    assert outputs["output_ids"]["shape"] == [3, width]
    assert unpad(outputs["output_ids"]["data"], width, outputs["output_lengths"]["data"]) == reference_outputs[1:4]
    assert outputs["logprobs"]["datatype"] == "FP32"
    assert outputs["logprobs"]["shape"] == [3, width]
    assert all(value <= 0 for value in outputs["logprobs"]["data"])


def test_v2_rest_infer_pads_short_outputs_with_minus_one(http):
    eos_free = {"temperature": 0, "ignore_eos": True}
    body = {"inputs": v2_body([PROMPTS[4], PROMPTS[5]], {})["inputs"], "parameters": {**eos_free, "max_tokens": 3}}
    response = http.post(INFER, json=body)
    assert response.status_code == 200, response.text
    outputs = outputs_by_name(response.json())
    assert outputs["output_lengths"]["data"] == [3, 3]
    # stop on the first token one row produces: that row ends after one token, the other is padded.
    first_token = outputs["output_ids"]["data"][0]
    stopped = http.post(INFER, json={**body, "parameters": {**eos_free, "max_tokens": 3,
                                                              "stop_token_ids": str(first_token)}})
    outputs = outputs_by_name(stopped.json())
    assert outputs["output_lengths"]["data"][0] == 1
    assert outputs["output_ids"]["data"][1:3] == [-1, -1]
    assert outputs["finish_reason"]["data"][0] == "stop"


async def test_v2_grpc_infer(server, reference_outputs):
    prompts = [PROMPTS[6], PROMPTS[7]]
    width = max(len(prompt) for prompt in prompts)
    ids = np.array([prompt + [0] * (width - len(prompt)) for prompt in prompts], dtype=np.int64)
    input_ids = InferInput("input_ids", list(ids.shape), "INT64")
    input_ids.set_data_from_numpy(ids, binary_data=False)
    lengths = InferInput("input_lengths", [2], "INT64")
    lengths.set_data_from_numpy(np.array([len(prompt) for prompt in prompts], dtype=np.int64), binary_data=False)
    # gRPC parameters are bool, int64 or string: a float travels as a string.
    parameters = {"max_tokens": REFERENCE_MAX_TOKENS, "temperature": "0.0", "ignore_eos": True, "logprobs": True}
    request = InferRequest(model_name=MODEL_NAME, infer_inputs=[input_ids, lengths], parameters=parameters)
    client = InferenceGRPCClient(server.grpc_url)
    try:
        response = await client.infer(request, timeout=60)
        bad = InferRequest(model_name=MODEL_NAME, infer_inputs=[input_ids], parameters={"top_p": "1.5"})
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.infer(bad, timeout=60)
    finally:
        await client.close()
    outputs = {output.name: output for output in response.outputs}
    assert outputs["output_ids"].as_numpy().tolist() == reference_outputs[6:8]
    assert outputs["output_lengths"].as_numpy().tolist() == [REFERENCE_MAX_TOKENS] * 2
    assert [reason.decode() for reason in outputs["finish_reason"].as_numpy()] == ["length", "length"]
    assert outputs["logprobs"].as_numpy().shape == (2, REFERENCE_MAX_TOKENS)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_p" in refused.value.details()


def test_v1_predict(http, reference_outputs):
    instances = [{"input_ids": PROMPTS[8], **GREEDY}, {"input_ids": PROMPTS[9], **GREEDY, "logprobs": True}]
    response = http.post(PREDICT, json={"instances": instances})
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert first["output_ids"] == reference_outputs[8]
    assert second["output_ids"] == reference_outputs[9]
    assert first["finish_reason"] == "length"
    assert "logprobs" not in first
    assert len(second["logprobs"]) == REFERENCE_MAX_TOKENS
    assert second["confidence"] == pytest.approx(min(second["logprobs"]))
    assert first["confidence"] < 0


def test_v1_predict_streams_json_lines(http, reference_outputs):
    body = {"stream": True, "instances": [{"input_ids": PROMPTS[10], **GREEDY}]}
    with http.stream("POST", PREDICT, json=body) as response:
        assert response.status_code == 200
        chunks = [json.loads(line) for line in response.iter_lines() if line]
    assert len(chunks) >= 2
    assert [token for chunk in chunks for token in chunk["output_ids"]] == reference_outputs[10]
    assert [chunk["finish_reason"] for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["finish_reason"] == "length"


def test_v1_stream_takes_one_instance(http):
    body = {"stream": True, "instances": [{"input_ids": [1, 2]}, {"input_ids": [3, 4]}]}
    response = http.post(PREDICT, json=body)
    assert response.status_code == 400
    assert "exactly one instance" in response.json()["error"]


def test_metadata_lists_inputs_and_outputs(http):
    metadata = http.get(f"/v2/models/{MODEL_NAME}").json()
    assert {(t["name"], t["datatype"]) for t in metadata["inputs"]} == {("input_ids", "INT64"),
                                                                        ("input_lengths", "INT64")}
    assert {(t["name"], t["datatype"]) for t in metadata["outputs"]} == {
        ("output_ids", "INT64"), ("output_lengths", "INT64"), ("finish_reason", "BYTES"), ("logprobs", "FP32")}


def test_ready_once_started(http):
    assert http.get(f"/v2/models/{MODEL_NAME}/ready").json() == {"name": MODEL_NAME, "ready": True}
    assert http.get(f"/v1/models/{MODEL_NAME}").status_code == 200


async def test_sixteen_concurrent_requests_equal_the_engine(server, reference_outputs):
    async def one(client: httpx.AsyncClient, index: int) -> list[int]:
        route = index % 3
        if route == 0:
            response = await client.post(INFER, json=v2_body([PROMPTS[index]], GREEDY))
            return response.json()["outputs"][0]["data"]
        if route == 1:
            response = await client.post(PREDICT, json={"instances": [{"input_ids": PROMPTS[index], **GREEDY}]})
            return response.json()["predictions"][0]["output_ids"]
        response = await client.post(f"/v2/models/{MODEL_NAME}/generate",
                                     json={"input_ids": PROMPTS[index], "parameters": GREEDY})
        return response.json()["output_ids"]

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        results = await asyncio.gather(*(one(client, index) for index in range(16)))
    assert results == reference_outputs


async def test_a_greedy_request_among_64_others_returns_the_same_tokens(server, reference_outputs):
    """The engine batches concurrent HTTP requests; what shares a batch (sampled requests of
    other lengths, preemption if the cache runs short) must not change a greedy result."""
    async def generate(client: httpx.AsyncClient, prompt: list[int], parameters: dict) -> list[int]:
        response = await client.post(f"/v2/models/{MODEL_NAME}/generate",
                                     json={"input_ids": prompt, "parameters": parameters})
        assert response.status_code == 200, response.text
        return response.json()["output_ids"]

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        others = [
            generate(client, PROMPTS[index % len(PROMPTS)][: 1 + index % 7],
                     {"max_tokens": 1 + index % 9, "temperature": 1.0, "seed": index})
            for index in range(64)
        ]
        target, *_ = await asyncio.gather(generate(client, PROMPTS[0], GREEDY), *others)
    assert target == reference_outputs[0]
