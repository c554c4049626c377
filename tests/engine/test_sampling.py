"""Sampling as a user sees it: parameter validation, seeded reproducibility whatever shares
the batch, stop tokens, EOS, min_tokens, logprobs against transformers, and abort."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import transformers

from runtime.engine import EngineConfig, LLMEngine, SamplingParams
from runtime.engine.sampling_params import MAX_TOP_LOGPROBS

from .tiny_models import random_prompts

MAX_TOKENS = 16
PROMPT = random_prompts(1, 20, 20, seed=11)[0]
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)


def make_engine(model_dir) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", device="cpu", num_kv_blocks=128))


@pytest.fixture(scope="module")
def engine(tiny_llama) -> LLMEngine:
    return make_engine(tiny_llama)


@pytest.fixture(scope="module")
def greedy_tokens(engine) -> list[int]:
    return engine.generate([PROMPT], GREEDY)[0].output_token_ids


def first_new_token_after(tokens: list[int], start: int) -> int:
    """Index of the first token at or after `start` that does not occur earlier in `tokens`."""
    return next(index for index in range(start, len(tokens)) if tokens[index] not in tokens[:index])


def sampling(**overrides) -> SamplingParams:
    return SamplingParams(**{"max_tokens": MAX_TOKENS, "temperature": 0.0, **overrides})


# Validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_tokens=0), "max_tokens must be an integer >= 1, got 0"),
        (dict(max_tokens=2.0), "max_tokens must be an integer >= 1"),
        (dict(max_tokens=True), "max_tokens must be an integer >= 1"),
        (dict(temperature=-0.1), r"temperature must be .*>= 0, got -0\.1"),
        (dict(temperature=float("nan")), r"temperature must be .*>= 0, got nan"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (dict(top_k=0), r"top_k must be -1 \(disabled\) or an integer >= 1, got 0"),
        (dict(top_k=-2), "top_k must be -1"),
        (dict(seed="7"), r"seed must be an integer.* or None, got '7'"),
        (dict(min_tokens=-1), r"min_tokens must be in \[0, max_tokens=16\], got -1"),
        (dict(min_tokens=17), r"min_tokens must be in \[0, max_tokens=16\], got 17"),
        (dict(top_logprobs=-1), r"top_logprobs must be .*\[0, 20\], got -1"),
        (dict(top_logprobs=21), r"top_logprobs must be .*\[0, 20\], got 21"),
        (dict(min_p=-0.1), r"min_p must be in \[0, 1\] \(0 disables it\), got -0.1"),
        (dict(min_p=1.5), r"min_p must be in \[0, 1\]"),
    ],
)
def test_invalid_sampling_params_raise_a_clear_value_error(settings, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**settings)


@pytest.mark.parametrize("top_logprobs", [2.5, "3"])
def test_a_non_integer_top_logprobs_is_rejected(top_logprobs):
    # Accepted today, 2.5 makes the whole engine step fail (topk() needs an int), and so
    # fails every request in the batch; "3" raises TypeError instead of a 400-worthy ValueError.
    with pytest.raises(ValueError, match="top_logprobs must be"):
        SamplingParams(top_logprobs=top_logprobs)


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_a_seed_torch_cannot_hold_is_rejected(seed):
    # Accepted today, it fails later inside add_request's torch.Generator.manual_seed with
    # "Overflow when unpacking long long", which kills the AsyncLLMEngine loop.
    with pytest.raises(ValueError, match="seed must be"):
        SamplingParams(seed=seed)


def test_an_infinite_temperature_is_rejected():
    # Accepted today: logits / inf turns the -inf that min_tokens puts on stop tokens into NaN,
    # and every sampled token becomes id 0.
    with pytest.raises(ValueError, match="temperature must be"):
        SamplingParams(temperature=float("inf"))


def test_valid_edges_are_accepted():
    params = SamplingParams(max_tokens=1, temperature=0.0, top_p=1.0, top_k=1, min_tokens=1, seed=0)
    assert params.greedy
    assert MAX_TOP_LOGPROBS == 20
    assert SamplingParams(top_logprobs=20).logprobs, "top_logprobs implies logprobs"
    assert SamplingParams(stop_token_ids=[5, 6]).stop_token_ids == (5, 6)


# Seeded sampling ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [dict(), dict(top_p=0.9), dict(top_k=50), dict(top_p=0.9, top_k=50), dict(min_p=0.1)],
    ids=["plain", "top_p", "top_k", "top_p_and_top_k", "min_p"],
)
def test_a_seeded_request_gives_the_same_tokens_whatever_else_is_in_the_batch(engine, variant):
    params = SamplingParams(max_tokens=24, temperature=1.0, seed=1234, ignore_eos=True, **variant)
    alone = engine.generate([PROMPT], params)[0].output_token_ids

    others = random_prompts(7, 1, 60, seed=12)
    other_params = [
        SamplingParams(max_tokens=30, temperature=1.0, ignore_eos=True),
        SamplingParams(max_tokens=5, temperature=0.0),
        SamplingParams(max_tokens=24, temperature=0.7, top_p=0.8, seed=7, ignore_eos=True),
        SamplingParams(max_tokens=40, temperature=1.3, ignore_eos=True),
        SamplingParams(max_tokens=12, temperature=1.0, top_k=5, seed=99, ignore_eos=True),
        SamplingParams(max_tokens=3, temperature=1.0),
        # The same seed on another prompt: generators are per request, not shared by seed.
        SamplingParams(max_tokens=24, temperature=1.0, seed=1234, ignore_eos=True),
    ]
    outputs = engine.generate(others[:3] + [PROMPT] + others[3:], other_params[:3] + [params] + other_params[3:])
    assert outputs[3].output_token_ids == alone
    assert len(alone) == 24


def test_different_seeds_give_different_tokens(engine):
    params = [SamplingParams(max_tokens=MAX_TOKENS, seed=seed, ignore_eos=True) for seed in range(4)]
    outputs = engine.generate([PROMPT] * 4, params)
    assert len({tuple(output.output_token_ids) for output in outputs}) == 4
    again = engine.generate([PROMPT], SamplingParams(max_tokens=MAX_TOKENS, seed=2, ignore_eos=True))[0]
    assert again.output_token_ids == outputs[2].output_token_ids


# Stopping -------------------------------------------------------------------------------


def test_a_stop_token_ends_the_request_and_is_its_last_token(engine, greedy_tokens):
    index = first_new_token_after(greedy_tokens, 2)
    stop = greedy_tokens[index]
    output = engine.generate([PROMPT], sampling(stop_token_ids=(stop, 0)))[0]
    assert output.output_token_ids == greedy_tokens[: index + 1]
    assert output.finish_reason == "stop"


def test_min_tokens_suppresses_stop_tokens_before_it(engine, greedy_tokens):
    index = first_new_token_after(greedy_tokens, 2)
    stop = greedy_tokens[index]
    # min_tokens=index lets token number index+1 stop the request ...
    output = engine.generate([PROMPT], sampling(stop_token_ids=(stop,), min_tokens=index))[0]
    assert output.output_token_ids == greedy_tokens[: index + 1]
    # ... min_tokens=index+1 does not, so greedy picks another token there.
    output = engine.generate([PROMPT], sampling(stop_token_ids=(stop,), min_tokens=index + 1))[0]
    assert output.output_token_ids[:index] == greedy_tokens[:index]
    assert output.output_token_ids[index] != stop
    assert len(output.output_token_ids) >= index + 1
    assert output.finish_reason == ("stop" if output.output_token_ids[-1] == stop else "length")
    # With min_tokens == max_tokens the stop token can never be drawn.
    output = engine.generate([PROMPT], sampling(stop_token_ids=(stop,), min_tokens=MAX_TOKENS))[0]
    assert len(output.output_token_ids) == MAX_TOKENS and stop not in output.output_token_ids
    assert output.finish_reason == "length"


def test_the_tiny_models_declare_eos_2(engine):
    assert engine.eos_token_ids == (2,)


@pytest.fixture(scope="module")
def eos_engine(tiny_llama, tmp_path_factory, greedy_tokens):
    """The tiny llama with a generation_config whose EOS list also holds a token greedy produces."""
    eos = greedy_tokens[first_new_token_after(greedy_tokens, 2)]
    directory = tmp_path_factory.mktemp("tiny-llama-eos")
    shutil.copytree(tiny_llama, directory, dirs_exist_ok=True)
    generation_config = json.loads((directory / "generation_config.json").read_text())
    generation_config["eos_token_id"] = [2, eos]
    (directory / "generation_config.json").write_text(json.dumps(generation_config))
    return make_engine(directory)


def test_eos_ends_the_request_unless_ignore_eos(eos_engine, greedy_tokens):
    index = first_new_token_after(greedy_tokens, 2)
    eos = greedy_tokens[index]
    assert eos_engine.eos_token_ids == (2, eos)

    stopped = eos_engine.generate([PROMPT], sampling())[0]
    assert stopped.output_token_ids == greedy_tokens[: index + 1]
    assert stopped.finish_reason == "stop"

    ignored = eos_engine.generate([PROMPT], sampling(ignore_eos=True))[0]
    assert ignored.output_token_ids == greedy_tokens
    assert ignored.finish_reason == "length"

    delayed = eos_engine.generate([PROMPT], sampling(min_tokens=index + 1))[0]
    assert delayed.output_token_ids[:index] == greedy_tokens[:index]
    assert delayed.output_token_ids[index] != eos


# Logprobs -------------------------------------------------------------------------------


def test_logprobs_are_none_unless_asked(engine):
    output = engine.generate([PROMPT], sampling(max_tokens=3))[0]
    assert output.logprobs is None and output.new_logprobs is None and output.top_logprobs is None


@pytest.mark.parametrize(
    "settings",
    # min_tokens keeps EOS from being drawn; the logprobs still describe the raw model distribution.
    [dict(ignore_eos=True), dict(min_tokens=MAX_TOKENS)],
    ids=["plain", "min_tokens"],
)
def test_greedy_logprobs_are_the_models_top_log_probabilities(engine, tiny_llama, greedy_tokens, settings):
    output = engine.generate([PROMPT], sampling(logprobs=True, **settings))[0]
    assert output.output_token_ids == greedy_tokens
    assert len(output.logprobs) == len(output.output_token_ids)
    assert all(logprob <= 0.0 for logprob in output.logprobs)

    model = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_llama, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT + greedy_tokens])).logits[0]
    # Row len(PROMPT)-1+i predicts output token i (teacher forcing on the greedy tokens).
    expected = torch.log_softmax(logits[len(PROMPT) - 1 : -1].float(), dim=-1)
    assert expected.argmax(dim=-1).tolist() == greedy_tokens
    torch.testing.assert_close(torch.tensor(output.logprobs), expected.max(dim=-1).values, atol=1e-4, rtol=0)


def test_top_logprobs_hold_k_alternatives_including_the_greedy_token(engine):
    k = 5
    output = engine.generate([PROMPT], sampling(top_logprobs=k))[0]
    assert output.logprobs is not None
    assert len(output.top_logprobs) == len(output.output_token_ids)
    for token, logprob, alternatives in zip(output.output_token_ids, output.logprobs, output.top_logprobs):
        assert len(alternatives) == k
        assert alternatives[token] == pytest.approx(logprob)
        assert logprob == pytest.approx(max(alternatives.values()))
        assert all(value <= 0.0 for value in alternatives.values())


def test_sampled_tokens_report_their_logprob_under_the_model(engine):
    params = SamplingParams(max_tokens=MAX_TOKENS, seed=5, top_logprobs=3, ignore_eos=True)
    output = engine.generate([PROMPT], params)[0]
    for logprob, alternatives in zip(output.logprobs, output.top_logprobs):
        assert logprob <= max(alternatives.values()) + 1e-6
        assert logprob <= 0.0


@pytest.mark.parametrize("min_p", [0.0, 0.3])
def test_min_p_draws_only_tokens_near_the_most_likely(engine, min_p):
    """At temperature 1 the raw logprobs are the sampling distribution's: with min_p every drawn
    token is at least min_p times as likely as the most likely one. The tiny model's flat
    distribution breaks that often without it (min_p 0 checks the test can fail)."""
    params = SamplingParams(max_tokens=64, temperature=1.0, seed=9, top_logprobs=1, ignore_eos=True, min_p=min_p)
    output = engine.generate([PROMPT], params)[0]
    floor = math.log(0.3)
    below = [logprob - max(top.values()) < floor - 1e-5 for logprob, top in zip(output.logprobs, output.top_logprobs)]
    assert (not any(below)) if min_p else sum(below) >= 5


def test_min_p_of_1_is_greedy(engine, greedy_tokens):
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=3, ignore_eos=True, min_p=1.0)
    assert engine.generate([PROMPT], params)[0].output_token_ids == greedy_tokens


def test_streamed_new_logprobs_add_up_to_the_final_list(engine):
    engine.add_request("streamed", PROMPT, sampling(logprobs=True, max_tokens=6, ignore_eos=True))
    streamed: list[float] = []
    final = None
    while engine.has_unfinished_requests():
        for output in engine.step():
            streamed += output.new_logprobs
            final = output
    assert final.finished and streamed == final.logprobs and len(streamed) == 6


# Abort ----------------------------------------------------------------------------------


def test_abort_mid_generation_ends_with_abort_and_frees_every_block(engine, greedy_tokens):
    engine.add_request("to-abort", PROMPT, sampling(max_tokens=50, ignore_eos=True))
    produced: list[int] = []
    while len(produced) < 3:
        for output in engine.step():
            produced += output.new_token_ids
    assert engine.stats().num_free_kv_blocks < engine.num_kv_blocks

    final = engine.abort("to-abort")
    assert final.finished and final.finish_reason == "abort"
    assert final.new_token_ids == []
    assert final.output_token_ids == produced == greedy_tokens[: len(produced)]
    assert not engine.has_unfinished_requests()
    assert engine.stats().num_free_kv_blocks == engine.num_kv_blocks
    engine.check_consistency()
    assert engine.abort("to-abort") is None
    assert engine.step() == []
