"""`make serve`'s launcher: the whole stack comes up on its ports and answers through the router's
OpenAI edge, the route graph and a transformer; Ctrl-C stops every component (exit 0, nothing left
listening)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from serving.local_stack import GRPC_PORT_OFFSET, SIZES, Ports
from tests.servers import REPO_ROOT

from .ports import free_port_block, is_listening

START_TIMEOUT = 240


def listening_ports(ports: Ports) -> list[int]:
    http = [ports.router, ports.graph, *(ports.transformer(size) for size in SIZES),
            *(ports.predictor(size) for size in SIZES)]
    return http + [port + GRPC_PORT_OFFSET for port in http if port != ports.graph]


def test_stack_serves_and_stops_on_ctrl_c(tmp_path):
    base = free_port_block(30)
    ports = Ports(base=base, router=base + 15, graph=base + 17)
    log_path = tmp_path / "stack.log"
    env = dict(os.environ, KSERVE_LLM_CPU_KERNELS="0", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "serving.local_stack", "--base_port", str(ports.base),
               "--router_port", str(ports.router), "--graph_port", str(ports.graph)]
    with open(log_path, "wb") as log:
        stack = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "Ctrl-C stops everything" not in log_path.read_text(errors="replace"):
            assert stack.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the stack did not come up"
            time.sleep(0.5)
        with httpx.Client(timeout=60) as client:
            edge = client.post(f"http://127.0.0.1:{ports.router}/openai/v1/completions",
                               json={"model": "auto", "prompt": "Hello", "max_tokens": 4, "stream": True})
            graph = client.post(f"http://127.0.0.1:{ports.graph}",
                                json={"instances": [{"prompt": "Hello", "max_tokens": 4}]})
            direct = client.post(f"http://127.0.0.1:{ports.transformer('large')}/openai/v1/completions",
                                 json={"model": "llm-large", "prompt": "Hello", "max_tokens": 4})
        assert edge.status_code == 200 and edge.headers["x-route"] == "small"
        assert edge.text.endswith("data: [DONE]\n\n")
        assert graph.status_code == 200 and graph.json()["predictions"][0]["completion_tokens"] == 4
        assert direct.status_code == 200 and direct.json()["usage"]["completion_tokens"] == 4
        stack.send_signal(signal.SIGINT)
        assert stack.wait(90) == 0
    finally:
        if stack.poll() is None:
            stack.kill()
    for port in listening_ports(ports):
        assert not is_listening(port), f"something still listens on {port} after the stack stopped"
