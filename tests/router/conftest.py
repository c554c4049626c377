"""Fixtures: a real router process (`python -m router --config ...`, through tests.servers), a real
graph runner process (`python -m router.graph`), a small Hugging Face tokenizer directory
built here (nothing downloaded), and one real redis-server for the session (tests.redis_server)
that the gateway's and the batch store's tests share, each test under its own key prefix."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from router.graph_server import READINESS_PATH
from tests.redis_server import RedisServer, start_redis
from tests.servers import MODEL_NAME, REPO_ROOT, Server, free_port, launch, run_python, start_process

EXAMPLE_CONFIG = REPO_ROOT / "router" / "router.yaml"
SHIPPED_PROMPTS = REPO_ROOT / "router" / "data" / "calibration_prompts.jsonl"
# tests.servers waits for the model of this name to be ready.
ROUTER_NAME = MODEL_NAME


def write_config(path: Path, **overrides: object) -> Path:
    """The example config with top-level sections replaced by `overrides` (its learned model's
    path made absolute, so that the copy finds it)."""
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    if config.get("policy", {}).get("learned_model"):
        config["policy"]["learned_model"] = str(EXAMPLE_CONFIG.parent / config["policy"]["learned_model"])
    config.update(overrides)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_router(config: Path, log_dir: Path, *extra_args: str) -> Server:
    return start_process("router", log_dir, ["--config", str(config), "--model_name", ROUTER_NAME,
                                             "--enable_latency_logging", "false", *extra_args])


def start_graph_runner(graph: Path, services: dict[str, str], log_dir: Path) -> Server:
    """`python -m router.graph GRAPH --service NAME=URL ...` on a free port, once /readyz answers."""
    port = free_port()
    args = [str(graph), "--port", str(port), "--log_level", "warning"]
    for name, url in services.items():
        args += ["--service", f"{name}={url}"]
    return launch("router.graph", log_dir, args, port, ready_path=READINESS_PATH)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer trained on a few lines, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["def routing_policy(request): return score", "What is the capital of Australia?",
              "Prove that the square root of 2 is irrational."] * 20
    tokenizer.train_from_iterator(corpus, trainer)
    directory = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart by key prefix (`redis_prefix`)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_prefix(request) -> str:
    """A key prefix of this test's own."""
    return f"test:{request.node.name}:{time.monotonic_ns()}:"
