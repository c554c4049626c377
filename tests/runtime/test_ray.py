"""Scale-out on Ray: a real server with `--ray_replicas 2` on a local Ray of 2 CPUs. Requests are
spread over both replicas with the engine's greedy tokens, streams stream, engine errors keep their
status code across Ray, a client leaving aborts the replica's request, and stopping the server
stops Ray."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import MODEL_NAME, PROMPTS, REFERENCE_MAX_TOKENS, Server, parse_sse, start_server

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ray[serve]')")

RAY_ARGS = ["--ray_replicas", "2", "--ray_num_cpus", "2", "--num_gpu_blocks", "256"]
# Logged once ray.init() has succeeded: a server that fails before it could not start Ray here.
RAY_STARTED = "engine replicas on Ray"
GREEDY = {"max_tokens": REFERENCE_MAX_TOKENS, "temperature": 0, "ignore_eos": True}
GENERATE = f"/v2/models/{MODEL_NAME}/generate"
GENERATE_STREAM = f"/v2/models/{MODEL_NAME}/generate_stream"
PREDICT = f"/v1/models/{MODEL_NAME}:predict"


@pytest.fixture(scope="module")
def ray_server(demo_model_dir, tmp_path_factory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("ray-server")
    try:
        started = start_server(log_dir, *RAY_ARGS, new_session=True)
    except RuntimeError as exc:
        log = "".join(path.read_text(errors="replace") for path in log_dir.glob("*.log"))
        if RAY_STARTED not in log:
            pytest.skip(f"Ray could not start here: {str(exc)[-500:]}")
        raise
    yield started
    started.stop()
    for pid in session_processes(started.process.pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def http(ray_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_server.url, timeout=60) as client:
        yield client


def session_processes(session_id: int) -> list[int]:
    """The processes still in the server's session (Ray's GCS, raylet, workers, replicas)."""
    table = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in table.splitlines()]
    return [int(pid) for pid, sid in rows if int(sid) == session_id]


def replica_requests(server: Server) -> dict[str, float]:
    """kserve_llm:replica_requests_total by replica, from /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    pattern = r'^kserve_llm:replica_requests_total\{[^}]*replica="([^"]+)"[^}]*\} (\S+)$'
    return {replica: float(value) for replica, value in re.findall(pattern, text, re.MULTILINE)}


def test_requests_are_spread_over_replicas_with_the_engines_tokens(ray_server, reference_outputs):
    before = replica_requests(ray_server)
    assert len(before) == 2

    async def generate_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=ray_server.url, timeout=60) as client:
            return await asyncio.gather(*(
                client.post(GENERATE, json={"input_ids": prompt, "parameters": GREEDY}) for prompt in PROMPTS[:8]
            ))

    responses = asyncio.run(generate_all())
    assert [response.status_code for response in responses] == [200] * 8
    assert [response.json()["output_ids"] for response in responses] == reference_outputs[:8]
    # The replicas' stats reach /metrics within about a second.
    deadline = time.monotonic() + 5
    while sum(replica_requests(ray_server).values()) < sum(before.values()) + 8 and time.monotonic() < deadline:
        time.sleep(0.2)
    after = replica_requests(ray_server)
    assert sum(after.values()) == sum(before.values()) + 8
    assert all(after[replica] > before[replica] for replica in after), after


def test_generate_stream_streams_events_from_a_replica(http, reference_outputs):
    with http.stream("POST", GENERATE_STREAM, json={"input_ids": PROMPTS[3], "parameters": GREEDY}) as response:
        assert response.status_code == 200
        events = parse_sse(list(response.iter_lines()))
    assert len(events) > 1
    assert [token for event in events for token in event["output_ids"]] == reference_outputs[3]
    assert events[-1]["finish_reason"] == "length"


def test_v1_predict_streams_json_lines_from_a_replica(http, reference_outputs):
    body = {"stream": True, "instances": [{"input_ids": PROMPTS[5], **GREEDY}]}
    with http.stream("POST", PREDICT, json=body) as response:
        assert response.status_code == 200
        chunks = [json.loads(line) for line in response.iter_lines() if line]
    assert len(chunks) > 1
    assert [token for chunk in chunks for token in chunk["output_ids"]] == reference_outputs[5]


@pytest.mark.parametrize("route", [GENERATE, GENERATE_STREAM])
def test_a_request_the_engine_rejects_gets_400_through_ray(http, route):
    response = http.post(route, json={"input_ids": [99999999], "parameters": {"max_tokens": 3}})
    assert response.status_code == 400
    assert response.json() == {"error": "token id 99999999 is outside the vocabulary [0, 8191]"}


def test_client_leaving_mid_stream_aborts_the_replicas_request(ray_server):
    # Some 2000 tokens: seconds of decoding, unless the replica's request is aborted.
    body = {"input_ids": [3, 4, 5, 6], "parameters": {"max_tokens": 2000, "ignore_eos": True}}
    with httpx.Client(base_url=ray_server.url, timeout=60) as client:
        with client.stream("POST", GENERATE_STREAM, json=body) as response:
            lines = response.iter_lines()
            events = []
            while len(events) < 2:
                events += parse_sse([next(lines)])
            assert ray_server.wait_for_metric("vllm:num_requests_running", lambda value: value == 1) == 1
        # Leaving the `with` closes the connection mid-stream.
    assert ray_server.wait_for_metric("vllm:num_requests_running", lambda value: value == 0, timeout=3.0) == 0
    assert ray_server.wait_for_metric("vllm:kv_cache_usage_perc", lambda value: value == 0, timeout=3.0) == 0


def test_stopping_the_server_stops_ray(ray_server):
    """Last in this module: it stops the shared server."""
    assert len(session_processes(ray_server.process.pid)) > 1  # Ray's processes run in its session
    assert ray_server.stop() == 0
    deadline = time.monotonic() + 10
    while session_processes(ray_server.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(ray_server.process.pid) == []
