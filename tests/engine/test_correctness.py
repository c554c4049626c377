"""Greedy outputs equal transformers' own generate, token for token (float32, CPU), for
every supported architecture and under each scheduling path: mixed lengths in one batch,
forced preemption, chunked prefill and prefix-cache hits."""

from __future__ import annotations

import pytest
import torch
import transformers

from runtime.engine import EngineConfig, LLMEngine, SamplingParams
from runtime.engine.models.gemma3 import Gemma3Forward

from .tiny_models import (
    ARCHITECTURES,
    COMMON,
    NATIVE_ARCHITECTURES,
    OWN_FORWARD_ARCHITECTURES,
    random_prompts,
)

MAX_TOKENS = 24
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)


def reference_outputs(model_dir, prompts: list[list[int]], max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    # Like ignore_eos: generate exactly max_tokens, without suppressing EOS's logit.
    model.generation_config.eos_token_id = None
    outputs = []
    for prompt in prompts:
        generated = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        outputs.append(generated[0, len(prompt):].tolist())
    return outputs


def make_engine(model_dir, **overrides) -> LLMEngine:
    settings = dict(model=str(model_dir), dtype="float32", device="cpu", num_kv_blocks=256)
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


def assert_same_tokens(engine_outputs, expected):
    for index, (output, tokens) in enumerate(zip(engine_outputs, expected)):
        assert output.output_token_ids == tokens, f"request {index} diverged from transformers"
        assert output.finish_reason == "length"


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_mixed_batch_matches_transformers(tiny_model_factory, architecture):
    model_dir = tiny_model_factory(architecture)
    prompts = random_prompts(12, 1, 70, seed=1)
    engine = make_engine(model_dir)
    # Every model path is covered: our own forward over our checkpoint reader's weights or over
    # transformers' model, and transformers' modules.
    assert (engine.runner.fast_forward is not None) == (architecture in OWN_FORWARD_ARCHITECTURES)
    assert (engine.runner.model is None) == (architecture in NATIVE_ARCHITECTURES)
    outputs = engine.generate(prompts, GREEDY)
    assert_same_tokens(outputs, reference_outputs(model_dir, prompts))
    engine.check_consistency()
    assert engine.stats().num_free_kv_blocks == engine.num_kv_blocks


def test_gemma3_own_forward_matches_transformers(tiny_model_factory):
    """Our Gemma 3 forward, which the runner does not choose (models/gemma3.py says why), put in
    its place: chunked prompts longer than the sliding window, decodes past it."""
    model_dir = tiny_model_factory("gemma3")
    prompts = random_prompts(12, 1, 70, seed=1)
    engine = make_engine(model_dir, max_num_batched_tokens=32)
    assert engine.runner.fast_forward is None
    assert Gemma3Forward.supports(engine.runner.model)
    engine.runner.fast_forward = Gemma3Forward.from_transformers(engine.runner.model)
    assert_same_tokens(engine.generate(prompts, GREEDY), reference_outputs(model_dir, prompts))
    engine.check_consistency()


@pytest.mark.parametrize("overrides", [{"final_logit_softcapping": 30.0}, {"use_bidirectional_attention": True}])
def test_gemma3_own_forward_refuses_what_it_does_not_compute(overrides):
    config = transformers.Gemma3TextConfig(**{**COMMON, **ARCHITECTURES["gemma3"][2], **overrides})
    assert not Gemma3Forward.supports(transformers.Gemma3ForCausalLM(config))


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_preemption_keeps_outputs_exact(tiny_model_factory, architecture):
    model_dir = tiny_model_factory(architecture)
    prompts = random_prompts(10, 20, 60, seed=2)
    # 20 blocks of 16 tokens cannot hold ten ~64-token sequences at once.
    engine = make_engine(model_dir, num_kv_blocks=20)
    outputs = engine.generate(prompts, GREEDY)
    assert engine.stats().num_preemptions > 0, "the KV budget was meant to force preemption"
    assert_same_tokens(outputs, reference_outputs(model_dir, prompts))
    engine.check_consistency()


@pytest.mark.parametrize("architecture", ["llama", "mistral", "qwen2", "gemma3"])
def test_chunked_prefill_keeps_outputs_exact(tiny_model_factory, architecture):
    model_dir = tiny_model_factory(architecture)
    prompts = random_prompts(6, 40, 120, seed=3)
    # A 32-token budget splits every prompt over several steps.
    engine = make_engine(model_dir, max_num_batched_tokens=32)
    outputs = engine.generate(prompts, GREEDY)
    assert_same_tokens(outputs, reference_outputs(model_dir, prompts))


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_shared_prefixes_hit_the_cache_and_match(tiny_model_factory, architecture):
    model_dir = tiny_model_factory(architecture)
    system = random_prompts(1, 50, 50, seed=4)[0]
    suffixes = random_prompts(6, 1, 30, seed=5)
    prompts = [system + suffix for suffix in suffixes]
    engine = make_engine(model_dir)
    first = engine.generate(prompts[:1], GREEDY)
    rest = engine.generate(prompts[1:], GREEDY)
    stats = engine.stats()
    # 50 shared tokens = 3 full blocks of 16 for each of the 5 later requests.
    assert stats.prefix_cache_hits >= 5 * 48
    assert all(output.num_cached_tokens >= 48 for output in rest)
    assert_same_tokens(first + rest, reference_outputs(model_dir, prompts))


def test_everything_at_once(tiny_model_factory):
    """Preemption, chunking and prefix hits together in one engine."""
    model_dir = tiny_model_factory("llama")
    shared = random_prompts(1, 40, 40, seed=6)[0]
    prompts = [shared + suffix for suffix in random_prompts(8, 5, 40, seed=7)] + random_prompts(6, 1, 90, seed=8)
    engine = make_engine(model_dir, num_kv_blocks=24, max_num_batched_tokens=48, max_num_seqs=6)
    outputs = engine.generate(prompts, GREEDY)
    stats = engine.stats()
    assert stats.num_preemptions > 0
    assert stats.prefix_cache_hits > 0
    assert_same_tokens(outputs, reference_outputs(model_dir, prompts))
    engine.check_consistency()


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("architecture", ["llama", "mistral", "gemma", "gemma3"])
def test_each_decode_attention_backend_matches(tiny_model_factory, architecture, backend):
    model_dir = tiny_model_factory(architecture)
    prompts = random_prompts(8, 1, 60, seed=9)
    engine = make_engine(model_dir, attention_backend=backend, num_kv_blocks=40, max_num_batched_tokens=64)
    assert engine.runner.attention_backend.name == backend
    assert_same_tokens(engine.generate(prompts, GREEDY), reference_outputs(model_dir, prompts))
