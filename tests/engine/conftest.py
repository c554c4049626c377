"""Fixtures: tiny random-weight checkpoints, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .tiny_models import add_byte_level_tokenizer, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """tiny_model_factory("qwen2") -> path of a checkpoint directory (cached per session)."""
    built: dict[str, Path] = {}

    def factory(architecture: str = "llama") -> Path:
        if architecture not in built:
            directory = tmp_path_factory.mktemp(f"tiny-{architecture}")
            built[architecture] = build_tiny_model(directory, architecture)
        return built[architecture]

    return factory


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> Path:
    return tiny_model_factory("llama")



@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """An engine's num_threads sets torch's thread count for the whole process: every test module
    gives the default back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llama_with_tokenizer(tmp_path_factory) -> Path:
    """A tiny Llama with a byte-level tokenizer beside it (structured outputs need one)."""
    directory = build_tiny_model(tmp_path_factory.mktemp("tiny-llama-text"), "llama")
    return add_byte_level_tokenizer(directory)
