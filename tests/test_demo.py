"""Tests for the embedded demo model: an offline, deterministic Hugging Face checkpoint."""

import json
import logging
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from runtime.demo import build_demo_model, demo_model_dir, main

CHECKPOINT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model("small", tmp_path_factory.mktemp("cache"))


def read_config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def test_small_checkpoint_is_a_safetensors_llama(small_dir: Path):
    assert small_dir.name == "demo-small-v1"
    assert {path.name for path in small_dir.iterdir()} == CHECKPOINT_FILES
    config = read_config(small_dir)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == "float32"
    assert (config["hidden_size"], config["num_hidden_layers"]) == (256, 4)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["tie_word_embeddings"] is True
    assert config["max_position_embeddings"] == 2048
    tokenizer = AutoTokenizer.from_pretrained(small_dir)
    assert config["vocab_size"] == len(tokenizer)
    assert config["bos_token_id"] == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    assert config["pad_token_id"] == tokenizer.eos_token_id


@pytest.mark.parametrize("text", ["héllo wörld ✓ 你好", "  leading spaces\n\ttab 🦙", ""])
def test_tokenizer_round_trips_any_unicode(small_dir: Path, text: str):
    tokenizer = AutoTokenizer.from_pretrained(small_dir)
    token_ids = tokenizer(text).input_ids
    assert token_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(token_ids, skip_special_tokens=True) == text


def test_chat_template_renders_chatml(small_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(small_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
    ]
    conversation = (
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == conversation
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == conversation + "<|im_start|>assistant\n"
    token_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True).input_ids
    assert token_ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in token_ids


def test_transformers_loads_and_generates(small_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(small_dir)
    model = AutoModelForCausalLM.from_pretrained(small_dir)
    assert model.dtype == torch.float32
    prompt = tokenizer("def hello():", return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert output.shape == (1, prompt.input_ids.shape[1] + 5)


def test_second_build_reuses_the_cached_directory(small_dir: Path):
    weights_mtime = (small_dir / "model.safetensors").stat().st_mtime_ns
    assert build_demo_model("small", small_dir.parent) == small_dir
    assert (small_dir / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_command_line_prints_the_directory(small_dir: Path, capsys: pytest.CaptureFixture):
    main(["--size", "small", "--cache_dir", str(small_dir.parent)])
    assert capsys.readouterr().out == f"{small_dir}\n"


def test_builds_are_byte_identical_and_leave_the_callers_rng_alone(small_dir: Path, tmp_path: Path):
    torch.manual_seed(1234)
    expected_draw = torch.rand(4)
    torch.manual_seed(1234)
    other_dir = build_demo_model("small", tmp_path)
    assert torch.equal(torch.rand(4), expected_draw)
    assert other_dir != small_dir
    for name in CHECKPOINT_FILES:
        assert (other_dir / name).read_bytes() == (small_dir / name).read_bytes(), name


def test_build_log_says_the_text_is_gibberish(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="runtime.demo"):
        build_demo_model("small", tmp_path)
    assert "random" in caplog.text and "gibberish" in caplog.text


def test_concurrent_builds_share_one_directory(small_dir: Path, tmp_path: Path):
    results: list[Path] = []
    builders = [
        threading.Thread(target=lambda: results.append(build_demo_model("small", tmp_path)))
        for _ in range(3)
    ]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join()
    target = demo_model_dir("small", tmp_path)
    assert results == [target] * 3
    assert [path.name for path in tmp_path.iterdir()] == [target.name]
    weights = (target / "model.safetensors").read_bytes()
    assert weights == (small_dir / "model.safetensors").read_bytes()


def test_large_has_its_own_shape_and_untied_head(tmp_path: Path):
    large_dir = build_demo_model("large", tmp_path)
    assert large_dir.name == "demo-large-v1"
    config = read_config(large_dir)
    assert (config["hidden_size"], config["num_hidden_layers"]) == (512, 8)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (8, 4)
    assert config["intermediate_size"] == 1376
    assert config["tie_word_embeddings"] is False
    assert config["max_position_embeddings"] == 4096
    assert config["rope_parameters"]["rope_theta"] == 10000.0
    with safe_open(large_dir / "model.safetensors", framework="pt") as weights:
        assert weights.get_slice("lm_head.weight").get_shape() == [config["vocab_size"], 512]


def test_unknown_size_names_the_allowed_sizes(tmp_path: Path):
    with pytest.raises(ValueError, match="small, large"):
        build_demo_model("huge", tmp_path)
    with pytest.raises(ValueError, match="small, large"):
        demo_model_dir("huge")
    assert list(tmp_path.iterdir()) == []


def test_cache_root_is_the_argument_then_the_environment_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("KSERVE_LLM_CACHE", str(tmp_path / "env"))
    assert demo_model_dir("small") == tmp_path / "env" / "demo-small-v1"
    assert demo_model_dir("large", tmp_path / "arg") == tmp_path / "arg" / "demo-large-v1"
    monkeypatch.delenv("KSERVE_LLM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".cache" / "kserve-llm-runtime" / "demo-small-v1"
    assert demo_model_dir("small") == expected
