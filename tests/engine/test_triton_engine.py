"""The engine on the Triton attention backend: greedy outputs equal transformers' generate
(float32), through mixed decode/prefill steps, chunked prefill, prefix-cache hits and a
sliding window. Without a GPU the kernels run in Triton's CPU interpreter, so the shapes
and token counts are tiny."""

from __future__ import annotations

import pytest

from .triton_interpreter import needs_kernels, rerun_in_fresh_process, runs_in_fresh_process

from runtime.engine import SamplingParams

from .test_correctness import assert_same_tokens, make_engine, reference_outputs
from .tiny_models import random_prompts

MAX_TOKENS = 6
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)


@runs_in_fresh_process
def test_engine_in_a_fresh_interpreter_process():
    rerun_in_fresh_process(__file__)


@needs_kernels
@pytest.mark.parametrize("architecture", ["llama", "mistral"])
def test_triton_backend_matches_transformers(tiny_model_factory, architecture):
    model_dir = tiny_model_factory(architecture)
    shared = random_prompts(1, 20, 20, seed=10)[0]
    prompts = [shared + suffix for suffix in random_prompts(3, 1, 12, seed=11)] + random_prompts(2, 30, 45, seed=12)
    # A 24-token budget chunks the long prompts and mixes their chunks with decodes; the
    # mistral model's 24-token window then cuts into both prefill and decode attention.
    engine = make_engine(model_dir, attention_backend="triton", num_kv_blocks=32, max_num_batched_tokens=24)
    assert engine.runner.attention_backend.name == "triton"
    first = engine.generate(prompts[:1], GREEDY)
    rest = engine.generate(prompts[1:], GREEDY)
    assert all(output.num_cached_tokens >= 16 for output in rest[:2]), "the shared block was meant to be cached"
    assert_same_tokens(first + rest, reference_outputs(model_dir, prompts, MAX_TOKENS))
    engine.check_consistency()


def test_triton_on_the_cpu_needs_the_interpreter(tiny_llama, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_engine(tiny_llama, attention_backend="triton")
