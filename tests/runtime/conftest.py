"""Fixtures: real predictor processes (`python -m runtime --demo small`) on 127.0.0.1 with free
ports, stopped after use, and reference outputs of the engine itself on the same checkpoint."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from kserve import InferenceGRPCClient, InferInput, InferRequest, InferResponse

from runtime.demo import build_demo_model
from runtime.engine import EngineConfig, LLMEngine, SamplingParams

from tests.servers import MODEL_NAME, REPO_ROOT, Server, free_port, start_process  # noqa: F401 (re-exported)

NUM_KV_BLOCKS = 128
# Small, CPU-only, one thread per server: several servers share 2 cores during the suite.
SERVER_ARGS = [
    "--demo", "small", "--model_name", MODEL_NAME, "--device", "cpu", "--dtype", "float32",
    "--num_gpu_blocks", str(NUM_KV_BLOCKS), "--attention_backend", "torch", "--num_threads", "1",
    "--enable_latency_logging", "false",
]


def start_server(log_dir: Path, *extra_args: str, new_session: bool = False) -> Server:
    """A predictor on the demo model with the suite's settings, plus `extra_args`."""
    return start_process("runtime", log_dir, [*SERVER_ARGS, *extra_args], new_session)


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """Built once before any server starts, so servers never race to build it."""
    return build_demo_model("small")


@pytest.fixture(scope="session")
def server(demo_model_dir, tmp_path_factory) -> Iterator[Server]:
    """The shared predictor with default limits."""
    started = start_server(tmp_path_factory.mktemp("server"))
    yield started
    started.stop()


@pytest.fixture
def launch_server(demo_model_dir, tmp_path) -> Iterator[Callable[..., Server]]:
    """launch_server(*extra flags) -> a started server of its own, stopped after the test."""
    started: list[Server] = []

    def launch(*extra_args: str) -> Server:
        started.append(start_server(tmp_path, *extra_args))
        return started[-1]

    yield launch
    for each in started:
        each.stop()


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


# Varied prompts: the demo model repeats itself, so different prompts give different outputs.
PROMPTS = [[(7 * index + 13 * position) % 8000 + 5 for position in range(3 + index % 11)] for index in range(16)]
REFERENCE_MAX_TOKENS = 12


@pytest.fixture(scope="session")
def reference_outputs(demo_model_dir) -> list[list[int]]:
    """Greedy outputs of LLMEngine.generate for PROMPTS, as the servers are configured."""
    threads = torch.get_num_threads()
    try:
        engine = LLMEngine(EngineConfig(
            model=str(demo_model_dir), dtype="float32", device="cpu", num_kv_blocks=NUM_KV_BLOCKS,
            attention_backend="torch", num_threads=1,
        ))
        params = SamplingParams(max_tokens=REFERENCE_MAX_TOKENS, temperature=0.0, ignore_eos=True)
        return [output.output_token_ids for output in engine.generate(PROMPTS, params)]
    finally:
        torch.set_num_threads(threads)


async def grpc_infer(url: str, parameters: dict, prompt: tuple[int, ...] = (1, 2, 3)) -> InferResponse:
    """One v2 infer over gRPC with KServe's client; raises grpc.aio.AioRpcError on failure."""
    input_ids = InferInput("input_ids", [1, len(prompt)], "INT64")
    input_ids.set_data_from_numpy(np.array([list(prompt)], dtype=np.int64), binary_data=False)
    client = InferenceGRPCClient(url)
    try:
        return await client.infer(
            InferRequest(model_name=MODEL_NAME, infer_inputs=[input_ids], parameters=parameters), timeout=60
        )
    finally:
        await client.close()


def parse_sse(lines: list[str]) -> list[dict]:
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]


def metric_names(text: str) -> set[str]:
    return {match.group(1) for match in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.MULTILINE)}
