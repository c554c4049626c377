"""python -m runtime as a process: on SIGTERM it refuses new work at once, lets the request in
flight finish, then exits 0."""

from __future__ import annotations

import signal
import threading

import grpc
import httpx

from .conftest import MODEL_NAME, grpc_infer

MAX_TOKENS = 600


async def test_sigterm_finishes_the_request_in_flight_and_exits_0(launch_server):
    server = launch_server()
    body = {"input_ids": [1, 2, 3], "parameters": {"max_tokens": MAX_TOKENS, "ignore_eos": True}}
    result: dict = {}

    def long_request() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            result["response"] = client.post(f"/v2/models/{MODEL_NAME}/generate", json=body)

    request = threading.Thread(target=long_request)
    request.start()
    try:
        assert server.wait_for_metric("vllm:num_requests_running", lambda value: value == 1) == 1
        server.process.send_signal(signal.SIGTERM)
        # New work is refused while the request in flight goes on.
        try:
            await grpc_infer(server.grpc_url, {"max_tokens": 2})
            raise AssertionError("a request was admitted after SIGTERM")
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        request.join(60)
    assert server.process.wait(60) == 0
    response = result["response"]
    assert response.status_code == 200
    assert len(response.json()["output_ids"]) == MAX_TOKENS
    assert response.json()["finish_reason"] == "length"
