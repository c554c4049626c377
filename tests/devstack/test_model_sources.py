"""What the local stack serves (devstack/model_sources.py): a checkpoint's cost per token counted from
its weight matrices; the task models' router targets; the real models sized by that cost, the
cheaper one small, with the arguments their components get; and, without the real-models extra, a
message that says what to install instead of a traceback."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from devstack import model_sources
from devstack.local_stack import model_source
from devstack.model_sources import (
    REAL_CONTEXT_TOKENS,
    REAL_KV_CACHE_BYTES,
    TASK_MODELS,
    matmul_parameters,
    prepare_real_models,
)
from runtime import real_models
from runtime.real_models import RealModel

CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def fake_checkpoint(directory: Path, vocabulary: int, hidden: int, tied: bool, chat: bool) -> Path:
    """A checkpoint with one layer's matrices, a norm, an embedding (and an LM head unless tied),
    and a word-level tokenizer with or without a chat template."""
    directory.mkdir(parents=True)
    tensors = {"model.embed_tokens.weight": np.zeros((vocabulary, hidden), np.float32),
               "model.layers.0.mlp.up_proj.weight": np.zeros((2 * hidden, hidden), np.float32),
               "model.norm.weight": np.zeros(hidden, np.float32)}
    if not tied:
        tensors["lm_head.weight"] = np.zeros((vocabulary, hidden), np.float32)
    save_file(tensors, directory / "model.safetensors")
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 64}
    if chat:
        config["chat_template"] = CHAT_TEMPLATE
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def test_a_tied_embedding_counts_once_as_the_lm_head(tmp_path):
    tied = fake_checkpoint(tmp_path / "tied", vocabulary=100, hidden=8, tied=True, chat=True)
    untied = fake_checkpoint(tmp_path / "untied", vocabulary=100, hidden=8, tied=False, chat=True)
    # The embedding of an untied model is a lookup: only its LM head is multiplied by.
    assert matmul_parameters(tied) == matmul_parameters(untied) == 100 * 8 + 16 * 8


def test_the_task_models_targets_cost_their_matmul_parameters():
    assert [TASK_MODELS.router_target(size) for size in ("small", "large")] == [
        {"model": "llm-small", "cost_per_token": 0.72, "chat": True},
        {"model": "llm-large", "cost_per_token": 2.63, "chat": True},
    ]


@pytest.fixture
def packaged(tmp_path, monkeypatch) -> dict[str, Path]:
    """Two real models as their packages would give them: the first listed costs more per token,
    and has no chat template."""
    checkpoints = {"base-270m": fake_checkpoint(tmp_path / "base", vocabulary=2000, hidden=16, tied=True, chat=False),
                   "instruct-135m": fake_checkpoint(tmp_path / "instruct", vocabulary=500, hidden=16, tied=True,
                                                    chat=True)}
    files = {name: tmp_path / f"{name}.gguf" for name in checkpoints}
    known = {name: RealModel(name, f"{name}-package", f"{name}.gguf", name) for name in checkpoints}
    monkeypatch.setattr(model_sources, "REAL_MODELS", known)
    monkeypatch.setattr(model_sources, "gguf_file", lambda name, cache_dir=None: files[name])
    by_file = {files[name]: checkpoint for name, checkpoint in checkpoints.items()}
    monkeypatch.setattr(model_sources, "hf_checkpoint_dir", lambda path, cache_dir=None: by_file[path])
    return files


def test_the_cheaper_real_model_is_the_small_target(packaged):
    models = prepare_real_models()
    assert (models.model_name("small"), models.model_name("large")) == ("instruct-135m", "base-270m")
    assert models.router_target("small") == {"model": "instruct-135m", "cost_per_token": 0.01, "chat": True}
    assert models.router_target("large") == {"model": "base-270m", "cost_per_token": 0.03, "chat": False}
    # The components get the GGUF files, found converted in the cache, with a laptop's context and KV cache.
    assert models.predictor_args("large") == ["--model_dir", str(packaged["base-270m"]), "--max_model_len",
                                              str(REAL_CONTEXT_TOKENS), "--kv_cache_memory", str(REAL_KV_CACHE_BYTES)]
    assert models.transformer_args("small") == ["--tokenizer_dir", str(packaged["instruct-135m"]),
                                                "--max_model_len", str(REAL_CONTEXT_TOKENS)]


def test_the_example_calls_send_completions_to_the_base_model_and_chats_to_the_other(packaged):
    calls = prepare_real_models().example_calls("http://router", "http://graph", {"small": "http://small"})
    sent = [(call.split()[2], json.loads(call.split(" -d ", 1)[1].strip("'"))) for call in calls
            if call.startswith("curl")]
    completions = {body["model"] for url, body in sent if url.endswith("/openai/v1/completions")}
    chats = [body["model"] for url, body in sent if url.endswith("/chat/completions")]
    assert completions == {"auto", "base-270m"}
    # An auto chat (routed to the model with a chat template), one named for it, and one that shows
    # the base model's refusal.
    assert sorted(chats) == ["auto", "base-270m", "instruct-135m"]
    assert [body for url, body in sent if url == "http://graph"][0]["instances"][0]["prompt"]


def test_without_the_extra_the_stack_says_what_to_install(monkeypatch):
    absent = {"absent": RealModel("absent", "no-such-distribution-here", "x.gguf", "none")}
    monkeypatch.setattr(real_models, "REAL_MODELS", absent)
    monkeypatch.setattr(model_sources, "REAL_MODELS", absent)
    with pytest.raises(SystemExit) as exited:
        model_source(argparse.Namespace(real=True, demo=False))
    message = str(exited.value.code)
    assert "the real models ship in the real-models extra, which is not installed; in this checkout: " \
           "pip install -e '.[real-models]'" in message
    assert "no-such-distribution-here package, which is not installed" in message
