"""Async scheduling: each step is queued before the previous step's tokens reach the host, and a
decode's input token is taken from the device. From outside it must be the synchronous loop
with one step of lag: the same tokens, logprobs and finish reasons (greedy, seeded sampling,
stop tokens, min_tokens, chunked prefill, preemption, prefix caching), no token past a stop or
an abort, every KV block back at the end.

On the CPU the "device" is the host, so these tests check the bookkeeping; test_cuda_graphs
covers graph replays fed from the device, and with a GPU the same runs on CUDA streams.
"""

from __future__ import annotations

import pytest

from runtime.engine import ConfigError, EngineConfig, LLMEngine, RequestOutput, SamplingParams
from runtime.engine.model_runner import PENDING_TOKEN_PLACEHOLDER

from .tiny_models import random_prompts

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def make_engine(model_dir, async_scheduling: bool, **overrides) -> LLMEngine:
    settings = dict(
        model=str(model_dir), dtype="float32", device="cpu", num_kv_blocks=64, block_size=4, max_num_seqs=8,
        num_threads=1, async_scheduling=async_scheduling,
    )
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


def generate_both_ways(model_dir, prompts, params, **overrides) -> tuple[list[RequestOutput], list[RequestOutput]]:
    """(synchronous outputs, async outputs) of the same requests; checks the async engine's
    blocks all came back."""
    sync_outputs = make_engine(model_dir, False, **overrides).generate(prompts, params)
    engine = make_engine(model_dir, True, **overrides)
    async_outputs = engine.generate(prompts, params)
    engine.check_consistency()
    assert engine.stats().num_free_kv_blocks == engine.num_kv_blocks
    return sync_outputs, async_outputs


def assert_same_outputs(expected: list[RequestOutput], actual: list[RequestOutput]) -> None:
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        assert got.output_token_ids == want.output_token_ids, f"request {index}: tokens differ"
        assert got.finish_reason == want.finish_reason, f"request {index}: finish reason differs"
        assert got.logprobs == pytest.approx(want.logprobs), f"request {index}: logprobs differ"
        assert got.top_logprobs == want.top_logprobs or _close_top_logprobs(want.top_logprobs, got.top_logprobs)


def _close_top_logprobs(want, got) -> bool:
    return all(w.keys() == g.keys() and list(w.values()) == pytest.approx(list(g.values())) for w, g in zip(want, got))


def test_config_validates_and_defaults_off_on_the_cpu(tiny_llama):
    assert not LLMEngine(EngineConfig(model=str(tiny_llama), device="cpu", num_kv_blocks=16)).async_scheduling
    assert make_engine(tiny_llama, True).async_scheduling
    with pytest.raises(ConfigError, match="async_scheduling must be true, false or unset, got 'yes'"):
        EngineConfig(model=str(tiny_llama), async_scheduling="yes")


def test_tokens_come_out_one_step_later(tiny_llama):
    """The call that launches a step returns the step before it: a prompt's first token comes
    from the call after its prefill, and the last call only fetches."""
    engine = make_engine(tiny_llama, True)
    engine.add_request("a", [5, 6, 7, 8, 9], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    per_call = []
    while engine.has_unfinished_requests():
        per_call.append([output.new_token_ids for output in engine.step()])
    assert [len(outputs) for outputs in per_call] == [0, 1, 1, 1]
    expected = make_engine(tiny_llama, False).generate([[5, 6, 7, 8, 9]], GREEDY)[0].output_token_ids[:3]
    assert [outputs[0][0] for outputs in per_call[1:]] == expected


def test_decode_inputs_come_from_the_device(tiny_llama):
    """Decode rows whose token is still being sampled get a placeholder on the host; the right
    token reaches the model anyway (the outputs equal the synchronous engine's)."""
    engine = make_engine(tiny_llama, True)
    runner = engine.runner
    host_inputs = []
    decode_rows = runner._decode_rows

    def recording_decode_rows(decodes):
        rows = decode_rows(decodes)
        host_inputs.append((list(rows.input_ids), list(rows.pending_rows)))
        return rows

    runner._decode_rows = recording_decode_rows
    prompts = random_prompts(3, 5, 9, seed=1)
    outputs = engine.generate(prompts, GREEDY)
    decode_steps = [(inputs, pending) for inputs, pending in host_inputs if pending]
    assert decode_steps, "no decode step took its input from the device"
    for inputs, pending in decode_steps:
        assert all(inputs[row] == PENDING_TOKEN_PLACEHOLDER for row in pending)
    assert_same_outputs(make_engine(tiny_llama, False).generate(prompts, GREEDY), outputs)


def test_greedy_seeded_and_logprobs_match_the_synchronous_engine(tiny_llama):
    prompts = random_prompts(6, 3, 20, seed=2)
    params = [
        SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=True),
        SamplingParams(max_tokens=7, temperature=1.0, seed=11, ignore_eos=True),
        SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, top_k=20, seed=12, ignore_eos=True, top_logprobs=3),
        SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=5, temperature=1.0, seed=13, ignore_eos=True, logprobs=True),
        SamplingParams(max_tokens=9, temperature=0.0, ignore_eos=True),
    ]
    assert_same_outputs(*generate_both_ways(tiny_llama, prompts, params))


def test_stops_and_min_tokens_match_and_drop_the_extra_row(tiny_llama):
    """A request that stops was already scheduled for one more step; that step's token for it
    is dropped, not sent."""
    prompts = random_prompts(4, 4, 12, seed=3)
    free_run = make_engine(tiny_llama, False).generate(prompts, GREEDY)
    params = []
    for index, output in enumerate(free_run):
        stop = output.output_token_ids[2 + index]
        # Half stop at the stop token's first showing; half may not stop before min_tokens.
        params.append(SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop_token_ids=(stop,),
                                     min_tokens=0 if index % 2 else 6))
    sync_outputs, async_outputs = generate_both_ways(tiny_llama, prompts, params)
    assert_same_outputs(sync_outputs, async_outputs)
    for output, request in zip(async_outputs, params):
        tokens, stop = output.output_token_ids, request.stop_token_ids[0]
        assert stop not in tokens[:-1], "tokens went on past a stop token"
        assert stop not in tokens[: request.min_tokens]
        if not request.min_tokens:
            assert output.finish_reason == "stop" and tokens[-1] == stop


def test_chunked_prefill_and_mixed_steps_match(tiny_llama):
    """A small token budget splits prompts into chunks that share steps with decodes whose
    input tokens are still on the device."""
    prompts = random_prompts(6, 10, 40, seed=4)
    assert_same_outputs(*generate_both_ways(tiny_llama, prompts, GREEDY, max_num_batched_tokens=16))


def test_preemption_with_tokens_in_flight_matches(tiny_llama):
    """A cache too small for every request forces preemptions of requests whose newest token
    is still being sampled; they are recomputed with it once it is known."""
    prompts = random_prompts(6, 8, 16, seed=5)
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    sync_engine = make_engine(tiny_llama, False, num_kv_blocks=16)
    expected = sync_engine.generate(prompts, params)
    engine = make_engine(tiny_llama, True, num_kv_blocks=16)
    outputs = engine.generate(prompts, params)
    assert engine.stats().num_preemptions > 0
    assert_same_outputs(expected, outputs)
    engine.check_consistency()
    assert engine.stats().num_free_kv_blocks == engine.num_kv_blocks


def test_blocks_filled_by_output_tokens_are_cached_as_in_the_synchronous_engine(tiny_llama):
    """A block whose last token was still being sampled when its step was launched is published
    once the token is known, so a follow-up request hits as many cached tokens either way."""
    prompt = random_prompts(1, 8, 8, seed=6)[0]
    params = SamplingParams(max_tokens=9, temperature=0.0, ignore_eos=True)
    hits = {}
    for async_scheduling in (False, True):
        engine = make_engine(tiny_llama, async_scheduling)
        first = engine.generate([prompt], params)[0]
        follow_up = prompt + first.output_token_ids[:8] + [7]
        engine.generate([follow_up], SamplingParams(max_tokens=1, temperature=0.0))
        hits[async_scheduling] = engine.stats().prefix_cache_hits
    # 8 prompt + 8 output tokens: four full blocks of 4, all computed by the first request.
    assert hits[False] == hits[True] == 16


def test_abort_while_a_step_runs_sends_nothing_more_and_frees_blocks(tiny_llama):
    engine = make_engine(tiny_llama, True)
    prompts = random_prompts(2, 6, 6, seed=7)
    for index, prompt in enumerate(prompts):
        engine.add_request(f"r{index}", prompt, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    engine.step()  # prefill launched
    engine.step()  # first decode launched, first tokens out
    final = engine.abort("r0")
    assert final.finish_reason == "abort" and final.output_token_ids
    outputs = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            assert output.request_id == "r1", "an aborted request produced output"
            outputs[output.request_id] = output
    assert outputs["r1"].finished
    expected = make_engine(tiny_llama, False).generate([prompts[1]], SamplingParams(max_tokens=8, temperature=0.0,
                                                                                    ignore_eos=True))
    assert outputs["r1"].output_token_ids == expected[0].output_token_ids
    engine.check_consistency()
    assert engine.stats().num_free_kv_blocks == engine.num_kv_blocks


def test_a_request_at_max_tokens_is_not_scheduled_again(tiny_llama):
    """Its last token is still being sampled: nothing is computed for it past that."""
    engine = make_engine(tiny_llama, True)
    launched_rows = []
    execute = engine.runner.execute

    def recording_execute(scheduled):
        launched_rows.append(len(scheduled))
        return execute(scheduled)

    engine.runner.execute = recording_execute
    engine.add_request("one", [5, 6, 7], SamplingParams(max_tokens=1, temperature=0.0))
    assert engine.step() == []
    outputs = engine.step()
    assert [output.finish_reason for output in outputs] == ["length"]
    assert launched_rows == [1], "a step was launched for a request that had reached max_tokens"


def test_min_tokens_counts_the_token_still_being_sampled(tiny_llama):
    """A stop token is allowed from output index min_tokens on, also when the index before is
    still on the device: here greedy decoding reaches the stop token exactly there."""
    prompt = random_prompts(1, 6, 6, seed=8)[0]
    free_run = make_engine(tiny_llama, False).generate([prompt], GREEDY)[0].output_token_ids
    min_tokens = next(index for index in range(2, len(free_run)) if free_run[index] not in free_run[:index])
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop_token_ids=(free_run[min_tokens],),
                            min_tokens=min_tokens)
    output = make_engine(tiny_llama, True).generate([prompt], params)[0]
    assert output.finish_reason == "stop"
    assert output.output_token_ids == free_run[: min_tokens + 1]


def test_each_step_is_queued_before_the_previous_one_is_waited_for(tiny_llama):
    """The point of async scheduling: the device already has step k+1 when the host starts
    waiting for step k's tokens (and the synchronous loop waits for each step at once)."""
    for async_scheduling in (False, True):
        engine = make_engine(tiny_llama, async_scheduling)
        events = []
        launch = engine._launch

        def recording_launch(*args):
            launched = launch(*args)
            if launched is not None:
                step = sum(1 for kind, _ in events if kind == "launch")
                events.append(("launch", step))
                fetch = launched.pending.fetch
                launched.pending.fetch = lambda: events.append(("fetch", step)) or fetch()
            return launched

        engine._launch = recording_launch
        engine.generate(random_prompts(2, 4, 8, seed=9), SamplingParams(max_tokens=4, temperature=0.0,
                                                                        ignore_eos=True))
        fetched = [step for kind, step in events if kind == "fetch"]
        for step in fetched:
            position = events.index(("fetch", step))
            if async_scheduling and ("launch", step + 1) in events:
                assert events.index(("launch", step + 1)) < position, f"step {step} was waited for first"
            if not async_scheduling:
                assert events[position - 1] == ("launch", step)


@pytest.mark.parametrize(("argv", "expected"), [([], None), (["--async_scheduling"], True),
                                                 (["--no-async_scheduling"], False)])
def test_the_predictor_flag_sets_it_and_unset_leaves_the_device_default(argv, expected):
    import runtime.__main__ as runtime_main

    args = runtime_main.build_parser().parse_args(argv)
    assert runtime_main.engine_config(args, "model-dir").async_scheduling is expected
