"""`make serve`'s launcher: the whole stack comes up on its ports with the two task models and
answers through the router's OpenAI edge (an easy question stays with the small model, a hard one
goes to the large one), the route graph and a transformer; Ctrl-C stops every component (exit 0,
nothing left listening)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from devstack.local_stack import GRPC_PORT_OFFSET, SIZES, Ports
from tests.servers import REPO_ROOT

from tests.serving.ports import free_port_block, is_listening

START_TIMEOUT = 240
HARD = "What is 23 times 17?"


def chat(content: str, model: str = "auto", **fields: object) -> dict:
    """A greedy chat completion: the task models' answers are checked, not sampled."""
    return {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, **fields}


def listening_ports(ports: Ports) -> list[int]:
    http = [ports.router, ports.graph, *(ports.transformer(size) for size in SIZES),
            *(ports.predictor(size) for size in SIZES)]
    return http + [port + GRPC_PORT_OFFSET for port in http if port != ports.graph]


def test_stack_serves_and_stops_on_ctrl_c(tmp_path):
    base = free_port_block(30)
    ports = Ports(base=base, router=base + 15, graph=base + 17)
    log_path = tmp_path / "stack.log"
    env = dict(os.environ, KSERVE_LLM_CPU_KERNELS="0", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "devstack.local_stack", "--base_port", str(ports.base),
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
            easy = client.post(f"http://127.0.0.1:{ports.router}/openai/v1/chat/completions",
                               json=chat("What is 7 plus 5?"))
            streamed = client.post(f"http://127.0.0.1:{ports.router}/openai/v1/chat/completions",
                                   json=chat("Reverse this list: apple, river.", stream=True))
            hard = client.post(f"http://127.0.0.1:{ports.router}/openai/v1/chat/completions", json=chat(HARD))
            graph = client.post(f"http://127.0.0.1:{ports.graph}",
                                json={"instances": [{"messages": [{"role": "user", "content": "What is 7 plus 5?"}],
                                                    "temperature": 0}]})
            direct = client.post(f"http://127.0.0.1:{ports.transformer('large')}/openai/v1/chat/completions",
                                 json=chat("Reverse this list: apple, river, stone, cloud.", model="llm-large"))
        # The task models answer: an easy question stays with the small one, a hard one goes large.
        assert easy.status_code == 200 and easy.headers["x-route"] == "small"
        assert easy.json()["choices"][0]["message"]["content"] == "12"
        assert streamed.headers["x-route"] == "small" and streamed.text.endswith("data: [DONE]\n\n")
        assert hard.status_code == 200 and hard.headers["x-route"] == "large"
        assert hard.json()["choices"][0]["message"]["content"] == "391"
        assert graph.status_code == 200 and graph.json()["predictions"][0]["text"] == "12"
        assert direct.json()["choices"][0]["message"]["content"] == "cloud, stone, river, apple"
        demo = subprocess.run([sys.executable, "examples/routing_demo.py", "--url", f"http://127.0.0.1:{ports.router}",
                               "--questions", "8"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert demo.returncode == 0, demo.stderr
        assert "answered by the large model" in demo.stdout and "small model" in demo.stdout
        stack.send_signal(signal.SIGINT)
        assert stack.wait(90) == 0
    finally:
        if stack.poll() is None:
            stack.kill()
    for port in listening_ports(ports):
        assert not is_listening(port), f"something still listens on {port} after the stack stopped"
