"""Fixtures of the reliability tests: the demo model built once before any server starts, and the
helpers that read a server process's health from the outside (its gauges, its memory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.demo import build_demo_model
from tests.servers import Server

# The predictor's gauges that must read zero once a server has nothing to do.
LOAD_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


@pytest.fixture(scope="session", autouse=True)
def demo_model_dir() -> Path:
    return build_demo_model("small")


def settled_gauges(predictor: Server, timeout: float = 10.0) -> dict[str, float]:
    """The load gauges, once they have read zero or `timeout` has passed (aborts reach the engine
    thread a moment after the response ends)."""
    return {name: predictor.wait_for_metric(name, lambda value: value == 0, timeout) for name in LOAD_GAUGES}


def rss_bytes(server: Server) -> int:
    """The server process's resident memory, from /proc."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {server.process.pid}")
