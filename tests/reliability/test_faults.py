"""Faults upstream of the transformer: a predictor killed mid-stream (the stream ends with an error
event, new requests get 503, and a predictor started again on the same port is used at once) and
a predictor that hangs (SIGSTOP: --predictor_request_timeout_seconds fires, for whole answers and
mid-stream, and service resumes on SIGCONT).

Covered elsewhere, not repeated here: the predictor's own --request_timeout aborting a slow
request (tests/runtime/test_errors.py::test_request_timeout_is_504_and_aborts), the transformer's
timeout against a busy predictor (tests/transformer/test_failures.py) and the router falling back
when a target's predictor or transformer dies
(tests/router/test_stack_e2e.py::test_the_edge_falls_back_when_the_large_model_is_stopped)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.runtime.conftest import start_server
from tests.servers import MODEL_NAME, REPO_ROOT, START_TIMEOUT, Server
from tests.transformer.conftest import start_transformer

from .clients import complete, stream_completion

PROMPT = "Once upon a time"
MAX_TOKENS = 8
LONG_STREAM = {"max_tokens": 1500, "ignore_eos": True}
PREDICTOR_TIMEOUT_SECONDS = 2


@pytest.fixture
def predictor(tmp_path) -> Iterator[Server]:
    started = start_server(tmp_path)
    yield started
    started.stop()


@pytest.fixture
def launch_transformer(tmp_path) -> Iterator:
    """launch_transformer(predictor_host, *extra flags) -> a transformer, stopped after the test."""
    started: list[Server] = []

    def launch(predictor_host: str, *extra_args: str) -> Server:
        started.append(start_transformer(tmp_path, predictor_host, *extra_args))
        return started[-1]

    yield launch
    for server in started:
        server.stop()


def restart(server: Server) -> Server:
    """The same command line again (same ports), once it is ready."""
    with open(server.log_path, "ab") as log:
        process = subprocess.Popen(server.process.args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, KSERVE_LLM_CPU_KERNELS="0", PYTHONUNBUFFERED="1"))
    restarted = Server(process, server.http_port, server.grpc_port, server.log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while not is_ready(restarted):
        if process.poll() is not None or time.monotonic() > deadline:
            restarted.stop()
            raise RuntimeError(f"the predictor did not start again:\n{restarted.log()[-3000:]}")
        time.sleep(0.2)
    return restarted


def is_ready(server: Server) -> bool:
    try:
        return httpx.get(f"{server.url}/v2/models/{MODEL_NAME}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


async def test_a_killed_predictor_ends_the_stream_with_an_error_and_a_new_one_is_used(predictor, launch_transformer):
    transformer = launch_transformer(f"127.0.0.1:{predictor.http_port}")
    async with httpx.AsyncClient(base_url=transformer.url, timeout=60) as client:
        expected = await complete(client, PROMPT, MAX_TOKENS)
        async with client.stream("POST", "/openai/v1/completions", json={
                "model": MODEL_NAME, "prompt": PROMPT, "stream": True, **LONG_STREAM}) as response:
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            predictor.process.kill()
            rest = [line async for line in lines if line.startswith("data: ")]
        # The error event, then the end of the stream as OpenAI clients expect it.
        assert '"error"' in rest[-2] and "predictor" in rest[-2] and rest[-1] == "data: [DONE]", rest[-2:]
        down = await complete(client, PROMPT, MAX_TOKENS)
        assert down.status == 503 and down.retry_after == "1"
        restarted = restart(predictor)
        try:
            assert await complete(client, PROMPT, MAX_TOKENS) == expected
            assert (await stream_completion(client, PROMPT, MAX_TOKENS)).text == expected.text
        finally:
            restarted.stop()


async def test_a_hung_predictor_times_out_as_configured_and_service_resumes(predictor, launch_transformer):
    transformer = launch_transformer(f"127.0.0.1:{predictor.http_port}", "--predictor_request_timeout_seconds",
                                     str(PREDICTOR_TIMEOUT_SECONDS))
    async with httpx.AsyncClient(base_url=transformer.url, timeout=60) as client:
        expected = await complete(client, PROMPT, MAX_TOKENS)
        async with client.stream("POST", "/openai/v1/completions", json={
                "model": MODEL_NAME, "prompt": PROMPT, "stream": True, **LONG_STREAM}) as response:
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            predictor.process.send_signal(signal.SIGSTOP)
            try:
                rest = [line async for line in lines if line.startswith("data: ")]
                whole = await client.post("/openai/v1/completions",
                                           json={"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": MAX_TOKENS})
            finally:
                predictor.process.send_signal(signal.SIGCONT)
        assert '"error"' in rest[-2] and "time limit" in rest[-2] and rest[-1] == "data: [DONE]", rest[-2:]
        assert whole.status_code == 504 and f"{PREDICTOR_TIMEOUT_SECONDS} s" in whole.json()["error"]["message"]
        assert await complete(client, PROMPT, MAX_TOKENS) == expected
    assert predictor.wait_for_metric("vllm:num_requests_running", lambda running: running == 0) == 0
