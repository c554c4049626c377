"""Loading a checkpoint and sizing the engine: pickle weights and remote code are refused
unless allowed, missing files give clear errors, EngineConfig names the bad field and what
is allowed, and KV cache size, max_model_len, device and dtype resolve as documented and as
the startup log line states."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from runtime.engine import ConfigError, EngineConfig, LLMEngine, ModelLoadError, SamplingParams

from .tiny_models import COMMON

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13]]
FLOAT32_BYTES = 4


def make_engine(model_dir, **overrides) -> LLMEngine:
    settings = dict(model=str(model_dir), dtype="float32", device="cpu", num_kv_blocks=32)
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


def greedy_tokens(engine: LLMEngine) -> list[list[int]]:
    return [output.output_token_ids for output in engine.generate(PROMPTS, GREEDY)]


def kv_bytes_per_block(block_size: int) -> int:
    """Bytes of K and V for one block of the tiny Llama in float32, from its config alone."""
    head_dim = COMMON["hidden_size"] // COMMON["num_attention_heads"]
    layers, kv_heads = COMMON["num_hidden_layers"], COMMON["num_key_value_heads"]
    return 2 * layers * block_size * kv_heads * head_dim * FLOAT32_BYTES


@pytest.fixture
def pickle_checkpoint(tiny_llama, tmp_path) -> Path:
    """The tiny Llama with its weights in a pickle pytorch_model.bin and no safetensors."""
    # transformers 5 ignores save_pretrained(safe_serialization=False); write the pickle directly.
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama)
    directory = tmp_path / "pickle-llama"
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return directory


def copy_config_only(tiny_llama, directory: Path) -> Path:
    directory.mkdir()
    shutil.copy(tiny_llama / "config.json", directory / "config.json")
    return directory


# Unsafe checkpoints ----------------------------------------------------------------------


def test_pickle_weights_are_refused_by_default(pickle_checkpoint):
    with pytest.raises(ModelLoadError, match="pickle") as refused:
        make_engine(pickle_checkpoint)
    assert "pytorch_model.bin" in str(refused.value)
    assert "allow_pickle_weights" in str(refused.value)


def test_pickle_weights_load_when_allowed(pickle_checkpoint, tiny_llama):
    engine = make_engine(pickle_checkpoint, allow_pickle_weights=True)
    assert greedy_tokens(engine) == greedy_tokens(make_engine(tiny_llama))


def test_allowing_pickle_still_loads_safetensors(tiny_llama):
    """The flag permits pickle weights; it must not stop a safetensors checkpoint loading."""
    engine = make_engine(tiny_llama, allow_pickle_weights=True)
    assert greedy_tokens(engine) == greedy_tokens(make_engine(tiny_llama))


def test_remote_code_is_refused_unless_trusted(tiny_llama, tmp_path):
    directory = tmp_path / "remote-code"
    shutil.copytree(tiny_llama, directory)
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="auto_map") as refused:
        make_engine(directory)
    assert "trust_remote_code" in str(refused.value)


# The checkpoint's own code: it records that it ran by creating the file MARKER_NAME beside it.
MARKER_NAME = "remote-code-ran"
CUSTOM_CONFIGURATION = f"""
from pathlib import Path

from transformers import LlamaConfig

(Path({{checkpoint!r}}) / "{MARKER_NAME}").touch()


class CustomConfig(LlamaConfig):
    pass
"""
CUSTOM_MODELING = """
from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def remote_code_checkpoint(tiny_llama: Path, directory: Path) -> Path:
    """The tiny Llama with a config and model class of its own, in Python files of the checkpoint."""
    shutil.copytree(tiny_llama, directory)
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "configuration_custom.py").write_text(CUSTOM_CONFIGURATION.format(checkpoint=str(directory)))
    (directory / "modeling_custom.py").write_text(CUSTOM_MODELING)
    return directory


def test_remote_code_never_runs_unless_trusted(tiny_llama, tmp_path):
    checkpoint = remote_code_checkpoint(tiny_llama, tmp_path / "custom-code")
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        make_engine(checkpoint)
    assert not (checkpoint / MARKER_NAME).exists()
    # Trusted, the same checkpoint's code runs: what the refusal above kept from happening.
    engine = make_engine(checkpoint, trust_remote_code=True)
    assert (checkpoint / MARKER_NAME).exists()
    assert greedy_tokens(engine) == greedy_tokens(make_engine(tiny_llama))


# Missing files ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["empty directory", "missing directory"])
def test_a_directory_without_config_json_is_refused(tmp_path, layout):
    directory = tmp_path / "checkpoint"
    if layout == "empty directory":
        directory.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json") as refused:
        make_engine(directory)
    assert str(directory) in str(refused.value)


def test_a_directory_without_weights_is_refused(tiny_llama, tmp_path):
    directory = copy_config_only(tiny_llama, tmp_path / "no-weights")
    with pytest.raises(ModelLoadError, match=r"no weight files \(\*\.safetensors\)") as refused:
        make_engine(directory)
    assert str(directory) in str(refused.value)


# EngineConfig validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("block_size", 0, "block_size must be a positive integer, got 0"),
        ("max_num_seqs", 0, "max_num_seqs must be a positive integer, got 0"),
        ("max_num_batched_tokens", -1, "max_num_batched_tokens must be a positive integer, got -1"),
        ("num_kv_blocks", 0, "num_kv_blocks must be a positive integer, got 0"),
        ("dtype", "float64", "dtype must be one of auto, float32, float16, bfloat16; got 'float64'"),
        ("device", "tpu", "device must be one of auto, cpu, cuda; got 'tpu'"),
        ("gpu_memory_utilization", 1.5, r"gpu_memory_utilization must be in \(0, 1\], got 1.5"),
        ("gpu_memory_utilization", 0.0, r"gpu_memory_utilization must be in \(0, 1\], got 0.0"),
        ("max_queue_size", -1, "max_queue_size must be >= 0 or None, got -1"),
    ],
)
def test_engine_config_names_the_bad_field_and_what_is_allowed(field, value, message):
    with pytest.raises(ConfigError, match=message) as refused:
        EngineConfig(model="unused", **{field: value})
    assert isinstance(refused.value, ValueError)


def test_engine_config_needs_a_model():
    with pytest.raises(ConfigError, match="model must name a checkpoint directory"):
        EngineConfig(model="")


# Sizing and resolution -------------------------------------------------------------------


def test_num_kv_blocks_wins_over_a_memory_budget(tiny_llama):
    engine = make_engine(tiny_llama, num_kv_blocks=7, kv_cache_memory_bytes=1 << 30)
    assert engine.num_kv_blocks == 7
    assert engine.stats().num_kv_blocks == engine.stats().num_free_kv_blocks == 7


@pytest.mark.parametrize("block_size", [8, 16])
def test_kv_cache_memory_bytes_sets_the_block_count(tiny_llama, block_size):
    per_block = kv_bytes_per_block(block_size)
    # Just short of 11 blocks: the count rounds down.
    budget = 11 * per_block - 1
    engine = make_engine(tiny_llama, num_kv_blocks=None, kv_cache_memory_bytes=budget, block_size=block_size)
    assert engine.num_kv_blocks == budget // per_block == 10


def test_a_memory_budget_below_one_block_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="holds no block"):
        make_engine(tiny_llama, num_kv_blocks=None, kv_cache_memory_bytes=kv_bytes_per_block(16) - 1)


def test_cpu_default_cache_holds_no_more_than_every_sequence_at_full_length(tiny_llama):
    engine = make_engine(tiny_llama, num_kv_blocks=None, max_num_seqs=2, max_model_len=256)
    # 2 sequences x 256 tokens / 16 tokens per block.
    assert engine.num_kv_blocks == 32


def test_startup_log_states_dtype_device_kv_blocks_and_limits(tiny_llama, caplog):
    caplog.set_level(logging.INFO, logger="runtime.engine.engine")
    make_engine(tiny_llama, num_kv_blocks=24, block_size=8, max_model_len=512)
    ready = [record.getMessage() for record in caplog.records
             if record.name == "runtime.engine.engine" and record.getMessage().startswith("engine ready")]
    assert len(ready) == 1, ready
    line = ready[0]
    for fact in ("dtype=float32", "device=cpu", "kv_blocks=24 x 8 tokens", "max_model_len=512", str(tiny_llama)):
        assert fact in line, f"{fact!r} missing from the startup line: {line}"


def test_max_model_len_defaults_to_the_model_context(tiny_llama):
    assert make_engine(tiny_llama).max_model_len == COMMON["max_position_embeddings"]


def test_max_model_len_beyond_the_model_is_refused(tiny_llama):
    limit = COMMON["max_position_embeddings"]
    with pytest.raises(ValueError, match=f"max_model_len={2 * limit} exceeds the model's context length {limit}"):
        make_engine(tiny_llama, max_model_len=2 * limit)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks the GPU where there is one")
def test_auto_device_and_dtype_resolve_to_cpu_float32(tiny_llama):
    engine = make_engine(tiny_llama, dtype="auto", device="auto")
    assert engine.device == torch.device("cpu")
    assert engine.dtype == torch.float32


def test_attention_softcapping_is_refused_rather_than_ignored(tmp_path):
    config = transformers.Gemma2Config(**{**COMMON, "head_dim": 16}, attn_logit_softcapping=50.0)
    transformers.Gemma2ForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="softcapping"):
        LLMEngine(EngineConfig(model=str(tmp_path), num_kv_blocks=8))


@pytest.mark.parametrize("architecture", ["llama", "gemma"])
def test_an_already_built_model_serves_like_its_checkpoint(tiny_model_factory, architecture):
    """Our own forward (llama) and transformers' modules on the paged attention (gemma)."""
    model_dir = tiny_model_factory(architecture)
    expected = make_engine(model_dir).generate(PROMPTS, GREEDY)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = EngineConfig(model=f"in-memory {architecture}", dtype="float32", device="cpu", num_kv_blocks=32)
    outputs = LLMEngine(config, model=model).generate(PROMPTS, GREEDY)
    assert [output.output_token_ids for output in outputs] == [output.output_token_ids for output in expected]


def test_an_already_built_model_must_match_the_configured_dtype(tiny_llama):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with pytest.raises(ConfigError, match="dtype is 'bfloat16' but the model's weights are torch.float32"):
        LLMEngine(EngineConfig(model="in-memory", dtype="bfloat16", device="cpu"), model=model)
