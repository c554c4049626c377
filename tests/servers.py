"""Real server processes for the tests: started on 127.0.0.1 with free ports, waited for until
ready, stopped (SIGTERM, then SIGKILL) after use."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "demo"
# The first start on a fresh machine may build the demo model.
START_TIMEOUT = 180.0
# KServe's servers are ready once the model is.
MODEL_READY_PATH = f"/v2/models/{MODEL_NAME}/ready"
STOP_TIMEOUT = 30.0


def run_python(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`python args...` to completion, e.g. run_python("-m", "router.calibrate", ...)."""
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    http_port: int
    grpc_port: int | None
    log_path: Path
    ready_path: str = MODEL_READY_PATH

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


def start_process(module: str, log_dir: Path, args: list[str], new_session: bool = False) -> Server:
    """`python -m module *args` with free HTTP and gRPC ports, once its model is ready.
    `new_session`: the server leads a session of its own, so that what it spawns can be found."""
    http_port, grpc_port = free_port(), free_port()
    return launch(module, log_dir, [*args, "--http_port", str(http_port), "--grpc_port", str(grpc_port)],
                  http_port, grpc_port, new_session=new_session)


def launch(module: str, log_dir: Path, args: list[str], http_port: int, grpc_port: int | None = None,
           ready_path: str = MODEL_READY_PATH, new_session: bool = False) -> Server:
    """`python -m module *args`, listening on the ports its `args` give it, once `ready_path`
    answers 200. What it keeps (a router's usage ledger) goes in `log_dir`, not the home directory."""
    log_path = log_dir / f"{module}-{http_port}.log"
    env = dict(os.environ, KSERVE_LLM_CPU_KERNELS="0", PYTHONUNBUFFERED="1", KSERVE_LLM_STATE_DIR=str(log_dir))
    command = [sys.executable, "-m", module, *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=new_session)
    server = Server(process, http_port, grpc_port, log_path, ready_path)
    try:
        wait_until_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def wait_until_ready(server: Server, ready_path: str | None = None) -> None:
    """Returns once GET `ready_path` (the server's own by default) answers 200; raises if the
    server exits or takes too long."""
    ready_path = ready_path or server.ready_path
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {START_TIMEOUT} s:\n{server.log()[-3000:]}")
