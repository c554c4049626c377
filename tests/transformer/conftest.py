"""Fixtures: a real predictor and a real transformer in front of it (`python -m transformer
--demo small --predictor_host ...`), on 127.0.0.1 with free ports, stopped after use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from runtime.demo import build_demo_model
from tests.runtime.conftest import start_server
from tests.servers import MODEL_NAME, Server, start_process

TRANSFORMER_ARGS = ["--demo", "small", "--model_name", MODEL_NAME, "--enable_latency_logging", "false"]


def start_transformer(log_dir: Path, predictor_host: str, *extra_args: str) -> Server:
    return start_process("transformer", log_dir, [*TRANSFORMER_ARGS, "--predictor_host", predictor_host, *extra_args])


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return build_demo_model("small")


@pytest.fixture(scope="session")
def predictor(demo_dir, tmp_path_factory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("predictor"))
    yield started
    started.stop()


@pytest.fixture(scope="session")
def transformer(predictor, tmp_path_factory) -> Iterator[Server]:
    started = start_transformer(tmp_path_factory.mktemp("transformer"), f"127.0.0.1:{predictor.http_port}")
    yield started
    started.stop()


@pytest.fixture
def launch_transformer(demo_dir, tmp_path) -> Iterator[Callable[..., Server]]:
    """launch_transformer(predictor_host, *extra flags) -> a transformer of its own, stopped after the test."""
    started: list[Server] = []

    def launch(predictor_host: str, *extra_args: str) -> Server:
        started.append(start_transformer(tmp_path, predictor_host, *extra_args))
        return started[-1]

    yield launch
    for each in started:
        each.stop()


@pytest.fixture
def http(transformer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=transformer.url, timeout=60) as client:
        yield client
