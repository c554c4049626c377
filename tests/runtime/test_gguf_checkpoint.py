"""GGUF files as checkpoints (runtime/gguf_checkpoint.py), on a tiny random Llama written here with
the gguf package's own writer: converted once into the cache, equal to the model it was written
from, reused on later loads, and every bad file refused with a clear error and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from runtime import gguf_checkpoint
from runtime.engine import EngineConfig, LLMEngine, SamplingParams
from runtime.gguf_checkpoint import INSTALL_HINT, GGUFCheckpointError, hf_checkpoint_dir
from tests.servers import run_python

gguf = pytest.importorskip("gguf", reason=f"reading GGUF files needs the gguf package: {INSTALL_HINT}")
pytest.importorskip("accelerate", reason=f"transformers reads GGUF files only with accelerate: {INSTALL_HINT}")

END_OF_TEXT = "<|endoftext|>"
# Byte-level BPE: a token per byte, one merge, and the end-of-text token.
MERGES = ["h e"]
TOKENS = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["he", END_OF_TEXT]
CONTROL_TOKEN_TYPE = 3
NORMAL_TOKEN_TYPE = 1


@pytest.fixture(scope="module")
def source_model() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(TOKENS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=len(TOKENS) - 1, eos_token_id=len(TOKENS) - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def gguf_file(source_model: LlamaForCausalLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(source_model, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="module")
def converted(gguf_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_checkpoint_dir(gguf_file, tmp_path_factory.mktemp("cache"))


def write_gguf(model: LlamaForCausalLM, path: Path, architecture: str = "llama",
               extra_tensors: dict[str, tuple[np.ndarray, object]] | None = None) -> Path:
    """`model` as llama.cpp's converter writes it: float32 tensors under GGUF names, the query and
    key rows permuted for its rotary layout, and a GPT-2 style tokenizer in the metadata."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([NORMAL_TOKEN_TYPE] * (len(TOKENS) - 1) + [CONTROL_TOKEN_TYPE])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    for name, tensor in gguf_tensors(model).items():
        writer.add_tensor(name, tensor)
    for name, (raw, raw_dtype) in (extra_tensors or {}).items():
        writer.add_tensor(name, raw, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_tensors(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    config = model.config
    weights = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    tensors = {"token_embd.weight": weights["model.embed_tokens.weight"],
               "output_norm.weight": weights["model.norm.weight"]}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for layer in range(config.num_hidden_layers):
        for ours, theirs in per_layer.items():
            tensors[f"blk.{layer}.{theirs}.weight"] = weights[f"model.layers.{layer}.{ours}.weight"]
        tensors[f"blk.{layer}.attn_q.weight"] = rotary_permute(tensors[f"blk.{layer}.attn_q.weight"],
                                                               config.num_attention_heads)
        tensors[f"blk.{layer}.attn_k.weight"] = rotary_permute(tensors[f"blk.{layer}.attn_k.weight"],
                                                               config.num_key_value_heads)
    return tensors


def rotary_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's permutation of query and key rows (which transformers undoes on reading)."""
    return (weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def cache_entries(cache: Path) -> list[str]:
    folder = cache / "gguf"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def test_conversion_writes_a_float32_safetensors_checkpoint_equal_to_the_source(converted, source_model):
    names = {path.name for path in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".gguf"))]
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32, use_safetensors=True)
    prompt = torch.tensor([[5, 17, 200, 33, 90, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits, source_model(prompt).logits, rtol=0, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.decode(tokenizer("héllo, wörld").input_ids, skip_special_tokens=True) == "héllo, wörld"


def test_the_engine_serves_the_converted_checkpoint(converted):
    engine = LLMEngine(EngineConfig(model=str(converted), dtype="float32", device="cpu", num_kv_blocks=16))
    outputs = engine.generate([[5, 17, 200], [33, 90]], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    assert [len(output.output_token_ids) for output in outputs] == [4, 4]


def test_a_later_load_reuses_the_cache_without_converting(gguf_file, tmp_path, monkeypatch):
    first = hf_checkpoint_dir(gguf_file, tmp_path)
    written = (first / "model.safetensors").stat().st_mtime_ns

    def convert_again(*_args: object) -> None:
        raise AssertionError("the cached conversion was not reused")

    monkeypatch.setattr(gguf_checkpoint, "_convert", convert_again)
    assert hf_checkpoint_dir(gguf_file, tmp_path) == first
    assert hf_checkpoint_dir(gguf_file.parent, tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == written
    # The cache is keyed by the file's content, not its name.
    assert first.name.startswith(gguf_checkpoint.file_sha256(gguf_file))
    assert cache_entries(tmp_path) == [first.name]


def test_a_failed_conversion_leaves_nothing_behind(gguf_file, tmp_path, monkeypatch):
    def crash_half_way(_gguf_file: Path, directory: Path) -> None:
        (directory / "config.json").write_text("{}")
        raise RuntimeError("killed while saving")

    monkeypatch.setattr(gguf_checkpoint, "_convert", crash_half_way)
    with pytest.raises(RuntimeError, match="killed while saving"):
        hf_checkpoint_dir(gguf_file, tmp_path)
    assert cache_entries(tmp_path) == []


def test_checkpoint_directories_and_other_paths_pass_through(tmp_path, converted):
    assert hf_checkpoint_dir(converted, tmp_path / "cache") == converted
    assert hf_checkpoint_dir(tmp_path / "missing", tmp_path / "cache") == tmp_path / "missing"
    assert not (tmp_path / "cache").exists()


def test_a_directory_with_two_gguf_files_is_refused(tmp_path, gguf_file):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(gguf_file.read_bytes())
    with pytest.raises(GGUFCheckpointError, match=r"holds 2 GGUF files \(a.gguf, b.gguf\): name one of them"):
        hf_checkpoint_dir(tmp_path, tmp_path / "cache")


@pytest.mark.parametrize("damage", ["not gguf", "truncated"])
def test_a_corrupt_file_is_refused_clearly(tmp_path, gguf_file, damage):
    broken = tmp_path / "broken.gguf"
    content = gguf_file.read_bytes()
    broken.write_bytes(b"this is no model file" * 10 if damage == "not gguf" else content[: len(content) // 3])
    with pytest.raises(GGUFCheckpointError, match="is not a readable GGUF file"):
        hf_checkpoint_dir(broken, tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


def test_an_unsupported_architecture_is_refused_clearly(tmp_path, source_model):
    path = write_gguf(source_model, tmp_path / "rwkv.gguf", architecture="rwkv6")
    with pytest.raises(GGUFCheckpointError, match="is a 'rwkv6' model, which transformers cannot build from GGUF"):
        hf_checkpoint_dir(path, tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


def test_an_unsupported_quantization_type_is_refused_clearly(tmp_path, source_model):
    # Q8_1 is llama.cpp's type for activations: gguf has no dequantizer for it.
    q8_1 = gguf.GGMLQuantizationType.Q8_1
    block = np.zeros((1, gguf.GGML_QUANT_SIZES[q8_1][1]), dtype=np.uint8)
    path = write_gguf(source_model, tmp_path / "q8_1.gguf", extra_tensors={"blk.0.extra.weight": (block, q8_1)})
    with pytest.raises(GGUFCheckpointError, match="quantized as Q8_1, which cannot be dequantized"):
        hf_checkpoint_dir(path, tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


@pytest.mark.parametrize("command", [
    ["-m", "runtime", "--model_dir"],
    ["-m", "transformer", "--predictor_host", "127.0.0.1:1", "--tokenizer_dir"],
])
def test_the_servers_exit_2_on_a_corrupt_file_without_a_traceback(tmp_path, command):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    finished = run_python(*command, str(broken), "--cache_dir", str(tmp_path / "cache"))
    output = finished.stdout + finished.stderr
    assert finished.returncode == 2, output
    assert f"{broken} is not a readable GGUF file" in output
    assert "Traceback" not in output
