"""Decode steps as CUDA graphs: the same tokens as eager steps, padded batches that never
write a request's KV block, and the settings that turn graphs on and off.

On the CPU the graph logic runs with a capture whose replay reruns the recorded forward on
the static buffers (what a CUDA graph replay computes), on the torch attention backend. With a
GPU the same tests also capture real torch.cuda graphs over the Triton kernels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import torch
import transformers

from runtime.engine import ConfigError, EngineConfig, LLMEngine, ModelLoadError, SamplingParams
from runtime.engine.models import LlamaFamilyForward

from .tiny_models import COMMON, random_prompts

ON_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not ON_CUDA, reason="captures real CUDA graphs: needs a GPU")
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
GRAPH_SIZES = (1, 2, 4, 8)


class RerunCapture:
    """The CPU stand-in for CUDA graph capture: replaying reruns the forward on the static
    inputs and writes the result into the output the capture returned, as a graph replay does."""

    def __init__(self) -> None:
        self.captured_sizes: list[int] = []

    def __call__(self, run):
        output = run()
        self.captured_sizes.append(output.shape[0])

        def replay() -> None:
            output.copy_(run())

        return replay, output


@dataclass
class Platform:
    device: str
    attention_backend: str
    # The CPU capture when the graphs are simulated; None with real CUDA graphs.
    capture: RerunCapture | None


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=needs_cuda)])
def platform(request, monkeypatch) -> Platform:
    if request.param == "cuda":
        return Platform("cuda", "triton", None)
    capture = RerunCapture()
    monkeypatch.setattr(
        LLMEngine, "_decode_graph_capture", lambda engine: None if engine.config.enforce_eager else capture
    )
    return Platform("cpu", "torch", capture)


def make_engine(model_dir, platform: Platform, **overrides) -> LLMEngine:
    # Each step loop explicitly, so CPU and CUDA runs compare the same thing.
    settings = dict(
        model=str(model_dir), dtype="float32", device=platform.device, attention_backend=platform.attention_backend,
        num_kv_blocks=64, max_num_seqs=8, cuda_graph_batch_sizes=GRAPH_SIZES, num_threads=1, async_scheduling=False,
    )
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


def record_graph_steps(engine: LLMEngine) -> list[int]:
    """The number of rows of every step the engine runs as a graph, appended as it runs them."""
    rows: list[int] = []
    graphs = engine.runner.decode_graphs
    run = graphs.run

    def recording_run(input_ids, *rest):
        rows.append(len(input_ids))
        return run(input_ids, *rest)

    graphs.run = recording_run
    return rows


def without_syncs(function):
    """`function`, failing with an error if it makes the host wait for the GPU."""

    def checked(*args):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return function(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    return checked


def generate_both_ways(model_dir, platform, prompts, params, **overrides):
    """(graph engine outputs, eager engine outputs, rows of each graph step)."""
    graph_engine = make_engine(model_dir, platform, **overrides)
    graph_steps = record_graph_steps(graph_engine)
    graph_outputs = graph_engine.generate(prompts, params)
    graph_engine.check_consistency()
    assert graph_engine.stats().num_free_kv_blocks == graph_engine.num_kv_blocks
    eager_outputs = make_engine(model_dir, platform, enforce_eager=True, **overrides).generate(prompts, params)
    return graph_outputs, eager_outputs, graph_steps


def assert_same_outputs(graph_outputs, eager_outputs):
    for index, (graph, eager) in enumerate(zip(graph_outputs, eager_outputs)):
        assert graph.output_token_ids == eager.output_token_ids, f"request {index} diverged from eager"
        assert graph.finish_reason == eager.finish_reason


# Settings -------------------------------------------------------------------------------------


def test_default_capture_sizes_reach_max_num_seqs():
    assert EngineConfig(model="m").cuda_graph_batch_sizes == (1, 2, 4, 8, 16, 24, 32, *range(48, 257, 16))
    assert EngineConfig(model="m", max_num_seqs=100).cuda_graph_batch_sizes[-3:] == (80, 96, 100)
    assert EngineConfig(model="m", max_num_seqs=3).cuda_graph_batch_sizes == (1, 2, 3)
    assert EngineConfig(model="m", max_num_seqs=1024).cuda_graph_batch_sizes[-1] == 256
    assert EngineConfig(model="m", cuda_graph_batch_sizes=[8, 1, 8]).cuda_graph_batch_sizes == (1, 8)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(enforce_eager="yes"), "enforce_eager must be true or false, got 'yes'"),
        (dict(cuda_graph_batch_sizes=[]), "cuda_graph_batch_sizes must be a non-empty list of batch sizes"),
        (dict(cuda_graph_batch_sizes=[4, 0]), "each of cuda_graph_batch_sizes must be a positive integer, got 0"),
        (dict(cuda_graph_batch_sizes=[64], max_num_seqs=32),
         "cuda_graph_batch_sizes go up to 64, but a step holds at most max_num_seqs=32"),
    ],
)
def test_bad_graph_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        EngineConfig(model="m", **overrides)


def test_cpu_steps_stay_eager_and_keep_every_block(tiny_llama, caplog):
    caplog.set_level(logging.INFO, logger="runtime.engine.engine")
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", device="cpu",
                                    kv_cache_memory_bytes=1 << 20))
    assert engine.runner.decode_graph_blocker() == "CUDA graphs need a CUDA device"
    assert "decode_graphs=off (CUDA graphs need a CUDA device)" in caplog.text
    assert engine.runner.decode_graphs is None
    assert engine.num_kv_blocks == (1 << 20) // engine.runner.kv_bytes_per_block


def test_graphs_reserve_their_padding_block_from_the_budget(tiny_llama, platform):
    engine = make_engine(tiny_llama, platform, num_kv_blocks=None, kv_cache_memory_bytes=1 << 20)
    per_block = engine.runner.kv_bytes_per_block
    assert engine.num_kv_blocks == (1 << 20) // per_block - 1
    assert engine.runner.padding_block == engine.num_kv_blocks
    assert engine.runner.kv_caches[0][0].shape[0] == engine.num_kv_blocks + 1
    assert engine.block_manager.num_blocks == engine.num_kv_blocks


def test_enforce_eager_captures_nothing(tiny_llama, platform, caplog):
    caplog.set_level(logging.INFO, logger="runtime.engine.engine")
    engine = make_engine(tiny_llama, platform, enforce_eager=True)
    assert engine.runner.decode_graphs is None
    assert engine.runner.padding_block is None
    assert "decode_graphs=off (enforce_eager)" in caplog.text


@pytest.mark.parametrize("rope_parameters, graphs_possible", [
    (None, True),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 256, "rope_theta": 10000.0}, True),
    ({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}, False),
])
def test_rope_that_reads_positions_keeps_steps_eager(rope_parameters, graphs_possible):
    extra = {} if rope_parameters is None else {"rope_parameters": rope_parameters}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, **extra))
    assert LlamaFamilyForward.from_transformers(model).rope_depends_on_longest_position is not graphs_possible


def test_a_failed_capture_says_how_to_run_without_graphs(tiny_llama, monkeypatch):
    def failing_capture(run):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(LLMEngine, "_decode_graph_capture", lambda engine: failing_capture)
    with pytest.raises(ModelLoadError, match="capturing decode steps as CUDA graphs failed .*enforce_eager"):
        make_engine(tiny_llama, Platform("cpu", "torch", None))


# The graph runner -----------------------------------------------------------------------------


def test_each_size_is_captured_largest_first_and_a_step_takes_the_next_size_up(tiny_llama, platform, caplog):
    caplog.set_level(logging.INFO, logger="runtime.engine.engine")
    engine = make_engine(tiny_llama, platform)
    assert "decode_graphs=1,2,4,8 (captured in " in caplog.text
    graphs = engine.runner.decode_graphs
    assert graphs.batch_sizes == GRAPH_SIZES
    if platform.capture is not None:
        assert platform.capture.captured_sizes == [8, 4, 2, 1]
    assert [graphs.captured_size(rows) for rows in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, None]


def test_padding_rows_write_only_the_padding_block(tiny_llama, platform):
    engine = make_engine(tiny_llama, platform, block_size=4)
    engine.generate(random_prompts(4, 10, 30, seed=1), GREEDY)  # real K/V in many blocks
    graphs = engine.runner.decode_graphs
    padding = graphs.padding_block
    # A first step of 4 rows over 3-block tables leaves those columns behind; the next step,
    # 3 rows with 2- and 3-block tables, is padded to 4 rows.
    graphs.run([3, 4, 5, 6], [0, 1, 2, 3], [20, 21, 22, 23], [[5, 6, 7]] * 4, [1, 2, 3, 4])
    before = [cache.clone() for layer in engine.runner.kv_caches for cache in layer]
    logits = graphs.run([7, 8, 9], [4, 5, 8], [24, 25, 28], [[5, 6], [6, 5], [5, 6, 7]], [5, 6, 9])
    assert logits.shape == (3, engine.vocab_size)
    assert graphs.input_ids[:4].tolist() == [7, 8, 9, 0]
    assert graphs.positions[:4].tolist() == [4, 5, 8, 0]
    assert graphs.slot_mapping[:4].tolist() == [24, 25, 28, graphs.padding_slot]
    assert graphs.context_lens[:4].tolist() == [5, 6, 9, 1]
    assert graphs.block_tables[:4, :3].tolist() == [[5, 6, padding], [6, 5, padding], [5, 6, 7], [padding] * 3]
    after = [cache for layer in engine.runner.kv_caches for cache in layer]
    real_slots = {(6, 0), (6, 1), (7, 0)}  # slots 24, 25 and 28 with 4-token blocks
    for old, new in zip(before, after):
        changed = {tuple(slot) for slot in (old != new).flatten(2).any(-1).nonzero().tolist()}
        assert real_slots <= changed <= real_slots | {(padding, 0)}


def test_static_block_tables_follow_tables_that_grow_move_and_change(tiny_llama, platform):
    engine = make_engine(tiny_llama, platform)
    graphs = engine.runner.decode_graphs
    padding = graphs.padding_block

    def step(tables: list[list[int]]) -> list[list[int]]:
        """A decode step (every row at position 0) over these tables; the static tables it read."""
        rows = len(tables)
        graphs.run([3] * rows, [0] * rows, [graphs.padding_slot] * rows, tables, [1] * rows)
        return graphs.block_tables[: graphs.captured_size(rows), :4].tolist()

    first, second, third = [1, 2], [3], [4, 5, 6]
    assert step([first, second, third]) == [[1, 2, padding, padding], [3] + [padding] * 3, [4, 5, 6, padding],
                                            [padding] * 4]
    first.append(7)  # a table grows; `second` finishes and `third` moves up a row
    assert step([first, third]) == [[1, 2, 7, padding], [4, 5, 6, padding]]
    third = [8]  # replaced, as preemption or a new request does
    assert step([third]) == [[8] + [padding] * 3]
    assert step([first, third, [9]]) == [[1, 2, 7, padding], [8] + [padding] * 3, [9] + [padding] * 3,
                                         [padding] * 4]


def test_graph_logits_match_eager_logits(tiny_llama, platform):
    engine = make_engine(tiny_llama, platform)
    for index, prompt in enumerate(random_prompts(5, 3, 40, seed=2)):
        engine.add_request(f"r{index}", prompt, GREEDY)
    engine.step()  # every prompt prefilled in one step: the next is 5 decodes
    scheduled = engine.scheduler.schedule().scheduled
    assert len(scheduled) == 5 and all(item.num_new_tokens == 1 for item in scheduled)
    runner = engine.runner
    _, graph_logits = runner.execute(scheduled)
    graph_logits = graph_logits.clone()
    graphs, runner.decode_graphs = runner.decode_graphs, None
    # The same step again, eagerly: it writes the same K/V to the same slots.
    _, eager_logits = runner.execute(scheduled)
    runner.decode_graphs = graphs
    assert graph_logits.shape == eager_logits.shape == (5, engine.vocab_size)
    torch.testing.assert_close(graph_logits, eager_logits, rtol=1e-4, atol=1e-4)


# Whole workloads, token for token -------------------------------------------------------------


def test_padded_batches_and_finishing_sequences_match_eager(tiny_llama, platform):
    prompts = random_prompts(11, 1, 50, seed=3)
    # Different lengths finish requests one by one, so the batch shrinks through sizes that
    # need padding; 11 requests at once are more than the largest graph (eager steps).
    params = [SamplingParams(max_tokens=2 + 2 * index, temperature=0.0, ignore_eos=True) for index in range(11)]
    params[3] = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9, seed=7)
    params[6] = SamplingParams(max_tokens=9, temperature=0.0, logprobs=True, top_logprobs=2)
    graph_outputs, eager_outputs, graph_steps = generate_both_ways(
        tiny_llama, platform, prompts, params, max_num_seqs=11
    )
    assert_same_outputs(graph_outputs, eager_outputs)
    torch.testing.assert_close(graph_outputs[6].logprobs, eager_outputs[6].logprobs, rtol=1e-4, atol=1e-4)
    assert set(graph_steps) - set(GRAPH_SIZES), "some graph steps were meant to be padded"


def test_preemption_and_prefix_hits_match_eager(tiny_llama, platform):
    shared = random_prompts(1, 32, 32, seed=4)[0]
    prompts = [shared + suffix for suffix in random_prompts(4, 1, 20, seed=5)] + random_prompts(6, 10, 60, seed=6)
    graph_outputs, eager_outputs, graph_steps = generate_both_ways(
        tiny_llama, platform, prompts, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True),
        num_kv_blocks=20, max_num_batched_tokens=40,
    )
    assert any(output.metrics.num_preemptions for output in graph_outputs), "the KV budget was meant to preempt"
    assert any(output.num_cached_tokens for output in graph_outputs), "the shared prefix was meant to be cached"
    assert graph_steps
    assert_same_outputs(graph_outputs, eager_outputs)


def test_one_token_prompt_chunks_ride_in_graph_steps(tiny_llama, platform):
    # With a 4-token budget, three decodes leave one token for the next prompt: a step of
    # single tokens in which that prompt's row samples nothing.
    prompts = random_prompts(6, 5, 12, seed=8)
    graph_outputs, eager_outputs, graph_steps = generate_both_ways(
        tiny_llama, platform, prompts, GREEDY, max_num_batched_tokens=4, max_num_seqs=4,
        cuda_graph_batch_sizes=(1, 2, 4),
    )
    assert_same_outputs(graph_outputs, eager_outputs)
    assert 4 in graph_steps


def test_async_scheduling_feeds_graph_replays_from_the_device(tiny_llama, platform):
    """With async scheduling a graph step is queued while its input tokens are still being
    sampled: they are copied into the graph's static input ids on the device. The tokens equal
    the eager synchronous engine's, also for a request that stops (its extra row dropped)."""
    prompts = random_prompts(7, 3, 30, seed=10)
    params = [SamplingParams(max_tokens=4 + 2 * index, temperature=0.0, ignore_eos=True) for index in range(7)]
    params[2] = SamplingParams(max_tokens=12, temperature=0.9, seed=3, ignore_eos=True)
    params[5] = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=2)
    eager_engine = make_engine(tiny_llama, platform, enforce_eager=True, async_scheduling=False)
    stop = eager_engine.generate([prompts[4]], params[4])[0].output_token_ids[3]
    params[4] = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop_token_ids=(stop,))
    graph_engine = make_engine(tiny_llama, platform, async_scheduling=True)
    graph_steps = record_graph_steps(graph_engine)
    graph_outputs = graph_engine.generate(prompts, params)
    graph_engine.check_consistency()
    assert graph_engine.stats().num_free_kv_blocks == graph_engine.num_kv_blocks
    eager_outputs = eager_engine.generate(prompts, params)
    assert_same_outputs(graph_outputs, eager_outputs)
    assert graph_outputs[4].finish_reason == "stop"
    torch.testing.assert_close(graph_outputs[5].logprobs, eager_outputs[5].logprobs, rtol=1e-4, atol=1e-4)
    assert graph_steps


@needs_cuda
def test_async_scheduling_queues_each_step_without_waiting(tiny_llama):
    """With async scheduling only fetching a step's tokens waits for the GPU: queueing a step,
    its sampling included (temperature, top-k/p, min_tokens, logprobs, the penalties counting
    tokens still on the device, logit bias), never does."""
    engine = make_engine(tiny_llama, Platform("cuda", "triton", None), max_num_batched_tokens=32, max_num_seqs=10,
                         async_scheduling=True)
    graph_steps = record_graph_steps(engine)
    engine._launch = without_syncs(engine._launch)
    params = [
        GREEDY,
        SamplingParams(max_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=1, ignore_eos=True),
        SamplingParams(max_tokens=12, temperature=0.0, min_tokens=4, stop_token_ids=(5, 6), logprobs=True,
                       top_logprobs=2),
        SamplingParams(max_tokens=12, temperature=0.7, seed=2, presence_penalty=0.5, frequency_penalty=0.3,
                       repetition_penalty=1.2, logit_bias={7: 2.0, 9: -3.0}, ignore_eos=True),
    ]
    prompts = random_prompts(9, 5, 70, seed=11)
    outputs = engine.generate(prompts, [params[index % len(params)] for index in range(9)])
    assert all(output.finished for output in outputs)
    assert graph_steps


@needs_cuda
def test_a_step_never_waits_for_the_gpu(tiny_llama):
    """Only the sampler may synchronise: the forward of prefill, mixed, graph and eager decode
    steps queues its copies and kernels without waiting."""
    engine = make_engine(tiny_llama, Platform("cuda", "triton", None), max_num_batched_tokens=32, max_num_seqs=10)
    graph_steps = record_graph_steps(engine)
    engine.runner.execute = without_syncs(engine.runner.execute)
    outputs = engine.generate(random_prompts(10, 5, 70, seed=9), GREEDY)
    assert all(output.finish_reason == "length" for output in outputs)
    assert graph_steps
