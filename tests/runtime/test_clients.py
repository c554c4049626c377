"""Independent v2 clients against a real server: Triton's tritonclient (HTTP with JSON and with
binary tensors, gRPC in a process of its own) and KServe's InferenceRESTClient; greedy tokens
equal LLMEngine.generate (KServe's InferenceGRPCClient is in test_model.py). A gRPC call that its
client cancels, or whose client-side deadline passes, aborts its engine request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.http as triton_http
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

from .conftest import MODEL_NAME, PROMPTS, REFERENCE_MAX_TOKENS, Server, grpc_infer

OUTPUT_NAMES = ("output_ids", "output_lengths", "finish_reason")
# KServe's gRPC parameters are bool, int64 or string: a float travels as a string (tritonclient's
# double is read too). JSON takes it as is.
GREEDY_GRPC = {"max_tokens": REFERENCE_MAX_TOKENS, "temperature": "0.0", "ignore_eos": True}
GREEDY_JSON = {"max_tokens": REFERENCE_MAX_TOKENS, "temperature": 0.0, "ignore_eos": True}
LONG = {"max_tokens": 1500, "ignore_eos": True}
TRITON_GRPC_CALL = Path(__file__).with_name("triton_grpc_call.py")


def padded_batch(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(prompt) for prompt in prompts)
    ids = np.array([prompt + [0] * (width - len(prompt)) for prompt in prompts], dtype=np.int64)
    return ids, np.array([len(prompt) for prompt in prompts], dtype=np.int64)


def unpadded(output_ids: np.ndarray, output_lengths: np.ndarray) -> list[list[int]]:
    return [row[:length].tolist() for row, length in zip(output_ids, output_lengths)]


def as_text(values: np.ndarray) -> list[str]:
    """BYTES elements: bytes from binary and gRPC contents, str from JSON."""
    return [value.decode() if isinstance(value, bytes) else value for value in values.reshape(-1)]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http(server, reference_outputs, binary):
    prompts = PROMPTS[11:13]
    ids, lengths = padded_batch(prompts)
    inputs = [triton_http.InferInput("input_ids", list(ids.shape), "INT64"),
              triton_http.InferInput("input_lengths", list(lengths.shape), "INT64")]
    inputs[0].set_data_from_numpy(ids, binary_data=binary)
    inputs[1].set_data_from_numpy(lengths, binary_data=binary)
    outputs = [triton_http.InferRequestedOutput(name, binary_data=binary) for name in OUTPUT_NAMES]
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=60)
    try:
        result = client.infer(MODEL_NAME, inputs, outputs=outputs, parameters=GREEDY_JSON)
    finally:
        client.close()
    assert unpadded(result.as_numpy("output_ids"), result.as_numpy("output_lengths")) == reference_outputs[11:13]
    assert as_text(result.as_numpy("finish_reason")) == ["length", "length"]


async def test_tritonclient_grpc(server, reference_outputs):
    result = await triton_grpc_call(server, PROMPTS[13:15], GREEDY_GRPC)
    assert unpadded(np.array(result["output_ids"]), np.array(result["output_lengths"])) == reference_outputs[13:15]
    assert result["finish_reason"] == ["length", "length"]


async def test_tritonclient_grpc_double_and_uint64_parameters(server, reference_outputs):
    """tritonclient sends a Python float as a double and `priority=` as a uint64, choices KServe's
    proto lacks: they are read from the parameter's unknown fields."""
    # Greedy only if the double 0.0 was read: the default temperature (1.0) samples.
    greedy = await triton_grpc_call(server, PROMPTS[13:15], GREEDY_JSON, priority=2)
    assert unpadded(np.array(greedy["output_ids"]), np.array(greedy["output_lengths"])) == reference_outputs[13:15]
    sampled = await triton_grpc_call(server, PROMPTS[13:14], {"temperature": 0.7, "top_p": 0.9, "max_tokens": 8,
                                                              "ignore_eos": True})
    assert sampled["output_lengths"] == [8] and sampled["finish_reason"] == ["length"]
    refused = await triton_grpc_call(server, PROMPTS[13:14], {"temperature": -1.0, "max_tokens": 8})
    assert refused["status"] == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert "temperature must be a finite number >= 0, got -1.0" in refused["message"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_kserve_rest_client(server, reference_outputs, binary):
    input_ids = InferInput("input_ids", [1, len(PROMPTS[15])], "INT64")
    input_ids.set_data_from_numpy(np.array([PROMPTS[15]], dtype=np.int64), binary_data=binary)
    request = InferRequest(model_name=MODEL_NAME, infer_inputs=[input_ids], parameters=GREEDY_JSON)
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        response = await client.infer(server.url, request, model_name=MODEL_NAME)
    finally:
        await client.close()
    outputs = {output.name: output for output in response.outputs}
    assert outputs["output_ids"].as_numpy().tolist() == [reference_outputs[15]]
    assert as_text(outputs["finish_reason"].as_numpy()) == ["length"]


async def test_cancelled_grpc_call_aborts_its_request(server):
    tokens_before = server.metric("vllm:generation_tokens_total")
    call = asyncio.create_task(grpc_infer(server.grpc_url, LONG))
    await wait_until_running(server)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    await assert_aborted(server, tokens_before)


async def test_grpc_client_deadline_aborts_its_request(server):
    tokens_before = server.metric("vllm:generation_tokens_total")
    call = asyncio.create_task(triton_grpc_call(server, [[1, 2, 3]], LONG, client_timeout=2.0))
    await wait_until_running(server)
    assert (await call)["status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED)
    await assert_aborted(server, tokens_before)


async def triton_grpc_call(server: Server, prompts: list[list[int]], parameters: dict,
                           client_timeout: float = 60.0, priority: int = 0) -> dict:
    """tritonclient's gRPC infer, in a process of its own (see triton_grpc_call.py)."""
    request = {"url": server.grpc_url, "model": MODEL_NAME, "prompts": prompts, "parameters": parameters,
               "client_timeout": client_timeout, "priority": priority}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(TRITON_GRPC_CALL), json.dumps(request), stdout=asyncio.subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0
    return json.loads(stdout)


async def wait_until_running(server: Server) -> None:
    running = await asyncio.to_thread(server.wait_for_metric, "vllm:num_requests_running", lambda value: value == 1)
    assert running == 1


async def assert_aborted(server: Server, tokens_before: float) -> None:
    """Within 2 s the engine runs nothing and holds no KV blocks, short of the request's max_tokens."""
    for name in ("vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        assert await asyncio.to_thread(server.wait_for_metric, name, lambda value: value == 0, 2.0) == 0
    assert server.metric("vllm:generation_tokens_total") - tokens_before < LONG["max_tokens"]
