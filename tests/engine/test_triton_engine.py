"""The engine on the Triton path (paged attention, and the fused norm, RoPE and activation
kernels of the llama-family forward): greedy outputs equal transformers' generate (float32),
through mixed decode/prefill steps, chunked prefill, prefix-cache hits, a sliding window,
Qwen3's per-head q/k norms and decode steps replayed as graphs. Without a GPU the kernels run in Triton's CPU
interpreter, so the shapes and token counts are tiny."""

from __future__ import annotations

import asyncio

import pytest

from .triton_interpreter import ON_CUDA, needs_kernels, rerun_in_fresh_process, runs_in_fresh_process

from runtime.engine import AsyncLLMEngine, EngineConfig, LLMEngine, SamplingParams
from runtime.engine.models.fused_layer_ops import FusedLayerOps

from .test_correctness import assert_same_tokens, make_engine, reference_outputs
from .test_cuda_graphs import RerunCapture, record_graph_steps
from .tiny_models import random_prompts

MAX_TOKENS = 6
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
# Triton runs on the GPU where there is one, else in the interpreter on the CPU.
DEVICE = "cuda" if ON_CUDA else "cpu"


@runs_in_fresh_process
def test_engine_in_a_fresh_interpreter_process():
    rerun_in_fresh_process(__file__)


@needs_kernels
@pytest.mark.parametrize("architecture", ["llama", "mistral", "qwen3"])
def test_triton_backend_matches_transformers(tiny_model_factory, architecture):
    model_dir = tiny_model_factory(architecture)
    shared = random_prompts(1, 20, 20, seed=10)[0]
    prompts = [shared + suffix for suffix in random_prompts(3, 1, 12, seed=11)] + random_prompts(2, 30, 45, seed=12)
    # A 24-token budget chunks the long prompts and mixes their chunks with decodes; the
    # mistral model's 24-token window then cuts into both prefill and decode attention.
    engine = make_engine(model_dir, device=DEVICE, attention_backend="triton", num_kv_blocks=32,
                         max_num_batched_tokens=24)
    assert engine.runner.attention_backend.name == "triton"
    assert isinstance(engine.runner.fast_forward.ops, FusedLayerOps)
    first = engine.generate(prompts[:1], GREEDY)
    rest = engine.generate(prompts[1:], GREEDY)
    assert all(output.num_cached_tokens >= 16 for output in rest[:2]), "the shared block was meant to be cached"
    assert_same_tokens(first + rest, reference_outputs(model_dir, prompts, MAX_TOKENS))
    engine.check_consistency()


@needs_kernels
def test_decode_graphs_over_the_triton_kernels_match_transformers(tiny_llama, monkeypatch):
    if not ON_CUDA:
        # On the CPU a replay reruns the recorded forward (see test_cuda_graphs.py).
        monkeypatch.setattr(LLMEngine, "_decode_graph_capture", lambda engine: RerunCapture())
    prompts = random_prompts(5, 3, 30, seed=13)
    params = [SamplingParams(max_tokens=2 + index, temperature=0.0, ignore_eos=True) for index in range(5)]
    engine = make_engine(tiny_llama, device=DEVICE, attention_backend="triton", num_kv_blocks=32, max_num_seqs=4,
                         cuda_graph_batch_sizes=(2, 4))
    graph_steps = record_graph_steps(engine)
    outputs = engine.generate(prompts, params)
    expected = reference_outputs(tiny_llama, prompts, MAX_TOKENS)
    for index, output in enumerate(outputs):
        assert output.output_token_ids == expected[index][: 2 + index], f"request {index} diverged from transformers"
    assert {1, 3} & set(graph_steps), "some graph steps were meant to be padded"
    engine.check_consistency()


@needs_kernels
def test_the_serving_loop_with_async_scheduling_matches_transformers(tiny_llama, monkeypatch):
    """AsyncLLMEngine with async scheduling (the default on CUDA): streams that arrive while
    others decode, in graph steps whose input tokens come from the device, give transformers'
    tokens, each streamed once."""
    if not ON_CUDA:
        monkeypatch.setattr(LLMEngine, "_decode_graph_capture", lambda engine: RerunCapture())
    engine = AsyncLLMEngine(EngineConfig(
        model=str(tiny_llama), dtype="float32", device=DEVICE, attention_backend="triton", num_kv_blocks=32,
        max_num_seqs=4, cuda_graph_batch_sizes=(2, 4), async_scheduling=True,
    ))
    assert engine.engine.async_scheduling
    graph_steps = record_graph_steps(engine.engine)
    prompts = random_prompts(4, 3, 20, seed=14)

    async def stream_all() -> list[list[int]]:
        async def one(index: int, prompt: list[int]) -> list[int]:
            await asyncio.sleep(0.02 * index)  # later requests join a batch that is decoding
            tokens: list[int] = []
            async for output in engine.stream(f"r{index}", prompt, GREEDY):
                tokens += output.new_token_ids
            return tokens

        return await asyncio.wait_for(asyncio.gather(*(one(index, prompt) for index, prompt in enumerate(prompts))),
                                      120)

    engine.start()
    try:
        streamed = asyncio.run(stream_all())
    finally:
        engine.shutdown()
    assert streamed == reference_outputs(tiny_llama, prompts, MAX_TOKENS)
    assert graph_steps, "no decode step ran as a graph"


def test_triton_on_the_cpu_needs_the_interpreter(tiny_llama, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_engine(tiny_llama, attention_backend="triton")
