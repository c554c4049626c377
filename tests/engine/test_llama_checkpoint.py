"""The native llama-family reader (runtime/engine/models/llama_checkpoint.py, llama_config.py,
rotary.py): its config defaults and RoPE tables are transformers' own, what it does not compute
goes to transformers' loader, and a checkpoint it reads never imports transformers. Greedy
equality with transformers' generate is in test_correctness.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from runtime.engine import EngineConfig, LLMEngine, ModelLoadError
from runtime.engine.models.llama_config import LlamaFamilyConfig, NotNative
from runtime.engine.models.rotary import RotaryEmbedding
from tests.servers import REPO_ROOT

from .tiny_models import COMMON

MINIMAL = {"vocab_size": 384, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 30,
           "num_attention_heads": 4}
ROPES = [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64, "rope_theta": 500000.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "rope_theta": 10000.0},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 128, "rope_theta": 1000000.0,
     "beta_fast": 16, "beta_slow": 2, "mscale": 0.707, "mscale_all_dim": 1.0, "truncate": False},
]


def sliding_windows_of(config: transformers.PretrainedConfig) -> tuple[int | None, ...]:
    """Each layer's window as transformers' attention modules take it."""
    if config.model_type == "mistral":
        return (config.sliding_window,) * config.num_hidden_layers
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    return tuple(config.sliding_window if kind == "sliding_attention" else None for kind in layer_types)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("extra", [{}, {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 20},
                                   {"num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-5},
                                   {"num_key_value_heads": None}])
def test_fields_a_config_leaves_out_take_transformers_defaults(model_type, extra):
    if model_type == "mistral" and extra == {"num_key_value_heads": None}:
        pytest.skip("MistralConfig refuses a null num_key_value_heads (the others read it as one per head)")
    raw = {"model_type": model_type, **MINIMAL, **extra}
    ours = LlamaFamilyConfig.from_dict(raw)
    theirs = transformers.AutoConfig.for_model(**raw)
    for name in ("num_key_value_heads", "rms_norm_eps", "hidden_act", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(ours, name) == getattr(theirs, name), name
    # As the attention modules take it (Qwen2's config has none unless given).
    assert ours.head_dim == (getattr(theirs, "head_dim", None) or theirs.hidden_size // theirs.num_attention_heads)
    assert ours.sliding_windows == sliding_windows_of(theirs)
    assert ours.rope["rope_theta"] == theirs.rope_parameters["rope_theta"]


@pytest.mark.parametrize("rope", ROPES, ids=[f"{rope['rope_type']}-{index}" for index, rope in enumerate(ROPES)])
def test_rotary_tables_are_transformers_own(rope):
    config = transformers.LlamaConfig(**COMMON, rope_parameters=dict(rope))
    theirs = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    ours = RotaryEmbedding(LlamaFamilyConfig.from_dict(config.to_dict()).rope, config.head_dim, torch.device("cpu"))
    positions = torch.arange(config.max_position_embeddings).unsqueeze(0)
    for dtype in (torch.float32, torch.bfloat16):
        hidden = torch.empty(0, dtype=dtype)
        for our_table, their_table in zip(ours(hidden, positions), theirs(hidden, positions)):
            assert torch.equal(our_table, their_table)


def test_legacy_rope_scaling_is_read_as_transformers_reads_it():
    raw = {"model_type": "llama", **MINIMAL, "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    theirs = transformers.AutoConfig.for_model(**raw).rope_parameters
    ours = LlamaFamilyConfig.from_dict(raw).rope
    assert (ours["rope_type"], ours["factor"], ours["rope_theta"]) == (
        theirs["rope_type"], theirs["factor"], theirs["rope_theta"])


@pytest.mark.parametrize("extra", [
    {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
    {"rope_parameters": {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": 64,
                         "short_factor": [1.0] * 8, "long_factor": [2.0] * 8, "rope_theta": 10000.0}},
    {"hidden_act": "relu"},
    {"quantization_config": {"quant_method": "fp8"}},
    {"model_type": "gemma"},
], ids=["dynamic", "longrope", "relu", "quantized", "gemma"])
def test_what_the_reader_does_not_compute_goes_to_transformers(extra):
    with pytest.raises(NotNative):
        LlamaFamilyConfig.from_dict({"model_type": "llama", **MINIMAL, **extra})


def test_a_missing_tensor_is_named(tiny_model_factory, tmp_path):
    source = tiny_model_factory("llama")
    (tmp_path / "config.json").write_text((source / "config.json").read_text())
    tensors = load_file(source / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="no tensor model.layers.1.self_attn.k_proj.weight"):
        LLMEngine(EngineConfig(model=str(tmp_path), num_kv_blocks=8))


def test_a_config_without_a_required_field_is_refused(tiny_model_factory, tmp_path):
    source = tiny_model_factory("llama")
    config = json.loads((source / "config.json").read_text())
    del config["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(source / "model.safetensors")
    with pytest.raises(ModelLoadError, match="hidden_size"):
        LLMEngine(EngineConfig(model=str(tmp_path), num_kv_blocks=8))


def test_the_predictor_and_a_native_load_import_no_transformers(tiny_model_factory):
    """transformers' import took over a second of the predictor's start-up: the predictor's
    modules, and an engine over a checkpoint the reader covers, go without it."""
    script = (
        "import sys\n"
        "import runtime.__main__\n"
        "from runtime.engine import EngineConfig, LLMEngine, SamplingParams\n"
        f"engine = LLMEngine(EngineConfig(model={str(tiny_model_factory('qwen3'))!r}, num_kv_blocks=8))\n"
        "engine.generate([[5, 6, 7]], SamplingParams(max_tokens=2))\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'transformers', 'ray'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
