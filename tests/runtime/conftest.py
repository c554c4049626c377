"""Fixtures: real predictor processes (`python -m runtime --demo small`) on 127.0.0.1 with free
ports, stopped after use, and reference outputs of the engine itself on the same checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from kserve import InferenceGRPCClient, InferInput, InferRequest, InferResponse

from runtime.demo import build_demo_model
from runtime.engine import EngineConfig, LLMEngine, SamplingParams

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "demo"
NUM_KV_BLOCKS = 128
# The first start on a fresh machine may build the demo model.
START_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
# Small, CPU-only, one thread per server: several servers share 2 cores during the suite.
SERVER_ARGS = [
    "--demo", "small", "--model_name", MODEL_NAME, "--device", "cpu", "--dtype", "float32",
    "--num_gpu_blocks", str(NUM_KV_BLOCKS), "--attention_backend", "torch", "--num_threads", "1",
    "--enable_latency_logging", "false",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample on /metrics (`labels` e.g. 'finished_reason="length"')."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + "{") and f'model_name="{MODEL_NAME}"' in line and labels in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_for_metric(self, name: str, predicate: Callable[[float], bool], timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(name)
            if predicate(value) or time.monotonic() > deadline:
                return value
            time.sleep(0.02)


def start_server(log_dir: Path, *extra_args: str, new_session: bool = False) -> Server:
    """`new_session`: the server leads a session of its own, so that what it spawns can be found."""
    http_port, grpc_port = free_port(), free_port()
    log_path = log_dir / f"server-{http_port}.log"
    env = dict(os.environ, KSERVE_LLM_CPU_KERNELS="0", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "runtime", *SERVER_ARGS, "--http_port", str(http_port),
               "--grpc_port", str(grpc_port), *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=new_session)
    server = Server(process, http_port, grpc_port, log_path)
    try:
        _wait_until_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/v2/models/{MODEL_NAME}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {START_TIMEOUT} s:\n{server.log()[-3000:]}")


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
