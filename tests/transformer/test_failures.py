"""What the transformer does when things go wrong upstream or with the client: a predictor that
is down (503 + Retry-After), too slow (504), a client that leaves mid-stream (the predictor's
request is aborted), oversized bodies (413), SIGTERM (exit 0); and that it stays small."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.servers import MODEL_NAME, free_port

LONG = {"max_tokens": 1500, "ignore_eos": True, "temperature": 0}


def test_unreachable_predictor_is_503_with_retry_after(launch_transformer):
    transformer = launch_transformer(f"127.0.0.1:{free_port()}")
    with httpx.Client(base_url=transformer.url, timeout=30) as client:
        openai_route = client.post("/openai/v1/completions", json={"model": MODEL_NAME, "prompt": "x"})
        kserve_route = client.post(f"/v1/models/{MODEL_NAME}:predict", json={"instances": [{"prompt": "x"}]})
        streamed = client.post("/openai/v1/chat/completions", json={
            "model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], "stream": True})
    for response in (openai_route, kserve_route, streamed):
        assert response.status_code == 503 and response.headers["retry-after"]
    assert "unreachable" in openai_route.json()["error"]["message"]
    assert openai_route.json()["error"]["type"] == "server_error"
    assert "unreachable" in kserve_route.json()["error"]


def test_predictor_timeout_is_504_and_aborts_upstream(predictor, launch_transformer):
    transformer = launch_transformer(f"127.0.0.1:{predictor.http_port}", "--predictor_request_timeout_seconds", "1")
    with httpx.Client(base_url=transformer.url, timeout=30) as client:
        response = client.post("/openai/v1/completions", json={"model": MODEL_NAME, "prompt": "x", **LONG})
    assert response.status_code == 504
    assert "predictor" in response.json()["error"]["message"]
    assert predictor.wait_for_metric("vllm:num_requests_running", lambda running: running == 0) == 0


def test_client_leaving_mid_stream_aborts_the_predictor_request(transformer, predictor):
    body = {"model": MODEL_NAME, "prompt": "Tell me everything", "stream": True, **LONG}
    with httpx.Client(base_url=transformer.url, timeout=30) as client:
        with client.stream("POST", "/openai/v1/completions", json=body) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in received)
            assert predictor.metric("vllm:num_requests_running") == 1
    # The connection is closed: the transformer closes its upstream stream, the predictor aborts.
    assert predictor.wait_for_metric("vllm:num_requests_running", lambda running: running == 0) == 0


def test_oversized_body_is_413(http):
    response = http.post("/openai/v1/completions", content=b"{" + b" " * (1 << 20) + b"}",
                         headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]


def test_the_transformer_holds_no_model(transformer):
    pid = transformer.process.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "libtorch" not in maps
    rss_kib = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS")).split()[1])
    assert rss_kib < 400 * 1024


def test_sigterm_exits_cleanly(predictor, launch_transformer):
    transformer = launch_transformer(f"127.0.0.1:{predictor.http_port}")
    # stop() kills what has not exited within its timeout, which would not be 0.
    assert transformer.stop() == 0
