"""`make serve`'s launcher: the stack comes up on its ports, answers through the transformer, and
Ctrl-C stops every component (exit 0, nothing left running)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from tests.servers import REPO_ROOT

START_TIMEOUT = 240


def free_port_block(span: int = 20) -> int:
    """A base port whose next `span` ports are all free."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + span < 65535 and all(_is_free(base + offset) for offset in range(1, span)):
            return base
    raise RuntimeError("no block of free ports found")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _is_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_stack_serves_and_stops_on_ctrl_c(tmp_path):
    base = free_port_block()
    log_path = tmp_path / "stack.log"
    env = dict(os.environ, KSERVE_LLM_CPU_KERNELS="0", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        stack = subprocess.Popen([sys.executable, "-m", "serving.local_stack", "--base_port", str(base)],
                                 cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "Ctrl-C stops everything" not in log_path.read_text(errors="replace"):
            assert stack.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the stack did not come up"
            time.sleep(0.5)
        response = httpx.post(f"http://127.0.0.1:{base + 2}/openai/v1/completions", timeout=60,
                              json={"model": "llm", "prompt": "Hello", "max_tokens": 4})
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4
        stack.send_signal(signal.SIGINT)
        assert stack.wait(90) == 0
    finally:
        if stack.poll() is None:
            stack.kill()
    for port in (base + 1, base + 2):
        assert not _is_listening(port), f"something still listens on {port} after the stack stopped"
