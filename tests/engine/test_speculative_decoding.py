"""Speculative decoding: greedy output equal to normal decoding whatever the draft, sampled output
distributed as the target's, stops and lengths exact inside accepted runs, exact block accounting
after rejections, cancellation, preemption, the batch-size switch and the counters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from scipy.stats import chisquare

from runtime.engine import ConfigError, EngineConfig, LLMEngine, SamplingParams
from runtime.engine.speculative import rejection_sample

from .tiny_models import COMMON, build_tiny_model, random_prompts

K = 4
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """target; "near", the target with noise on its weights (accepts some drafts, rejects others);
    "other", an unrelated random model (rejects nearly all)."""
    root = tmp_path_factory.mktemp("speculative")
    target = build_tiny_model(root / "target", "llama", seed=0)
    other = build_tiny_model(root / "other", "llama", seed=1)
    near = transformers.LlamaForCausalLM.from_pretrained(target)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(2)
        for parameter in near.parameters():
            parameter.add_(torch.randn_like(parameter) * parameter.std() * 0.35)
    near.save_pretrained(root / "near", safe_serialization=True)
    return {"target": target, "near": root / "near", "other": other}


def make_engine(models: dict[str, Path], draft: str | None, **overrides) -> LLMEngine:
    settings = dict(model=str(models["target"]), dtype="float32", device="cpu", max_model_len=256, num_threads=1)
    if draft is not None:
        # Speculating at every batch size these tests use (the default turns it off from 2).
        settings.update(speculative_model=str(models[draft]), num_speculative_tokens=K,
                        speculative_disable_by_batch_size=64)
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


@pytest.fixture(scope="module")
def normal(models) -> LLMEngine:
    return make_engine(models, None)


@pytest.fixture(scope="module")
def speculative(models) -> dict[str, LLMEngine]:
    return {draft: make_engine(models, draft) for draft in ("near", "other", "target")}


def run_checked(engine: LLMEngine, prompts, params) -> list:
    """engine.generate, with the block accounting checked after every step."""
    ids = [f"r{index}" for index in range(len(prompts))]
    for request_id, prompt, each in zip(ids, prompts, params if isinstance(params, list) else [params] * len(ids)):
        engine.add_request(request_id, prompt, each)
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
        engine.check_consistency()
    return [finished[request_id] for request_id in ids]


def assert_all_blocks_free(engine: LLMEngine) -> None:
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks
    draft_blocks = engine.speculator.block_manager
    assert draft_blocks.num_free_blocks == draft_blocks.num_blocks


@pytest.mark.parametrize("draft", ["near", "other", "target"])
def test_greedy_output_equals_normal_decoding(models, normal, speculative, draft):
    engine = speculative[draft]
    prompts = random_prompts(5, 3, 60, seed=3)
    expected = [out.output_token_ids for out in normal.generate(prompts, GREEDY)]
    before = engine.stats()
    outputs = run_checked(engine, prompts, GREEDY)
    assert [out.output_token_ids for out in outputs] == expected
    assert_all_blocks_free(engine)
    stats = engine.stats()
    proposed = stats.spec_decode_num_draft_tokens - before.spec_decode_num_draft_tokens
    accepted = stats.spec_decode_num_accepted_tokens - before.spec_decode_num_accepted_tokens
    assert proposed > 0
    if draft == "target":
        assert accepted == proposed
    elif draft == "near":
        assert 0 < accepted < proposed  # both accepted runs and rejections were exercised
    else:
        assert accepted < proposed / 4


def test_greedy_rows_beside_sampled_ones_keep_their_output(normal, speculative):
    """With a sampled request in the batch the step takes the rejection-sampling path, where a
    greedy row's p and q are one-hot: it must still keep exactly the target's argmax."""
    prompts = random_prompts(3, 5, 30, seed=4)
    expected = [out.output_token_ids for out in normal.generate(prompts[:2], GREEDY)]
    sampled = SamplingParams(max_tokens=24, temperature=1.0, top_k=20, top_p=0.9, ignore_eos=True)
    outputs = run_checked(speculative["near"], prompts, [GREEDY, GREEDY, sampled])
    assert [out.output_token_ids for out in outputs[:2]] == expected
    assert len(outputs[2].output_token_ids) == 24
    assert_all_blocks_free(speculative["near"])


def test_stop_token_inside_an_accepted_run_ends_the_output_there(normal, speculative):
    prompt = random_prompts(1, 10, 10, seed=5)[0]
    reference = normal.generate([prompt], GREEDY)[0].output_token_ids
    # The first token that appears once, well inside the output: all drafts are accepted, so it
    # arrives in the middle of a run of K + 1 tokens.
    index = next(i for i in range(5, len(reference)) if reference.index(reference[i]) == i)
    params = SamplingParams(max_tokens=24, temperature=0.0, stop_token_ids=(reference[index],))
    output = run_checked(speculative["target"], [prompt], params)[0]
    assert output.output_token_ids == reference[: index + 1]
    assert output.finish_reason == "stop"
    assert_all_blocks_free(speculative["target"])


@pytest.mark.parametrize("max_tokens", [1, 2, 3, K + 1, K + 2, 2 * K + 3])
def test_max_tokens_is_exact(normal, speculative, max_tokens):
    prompt = random_prompts(1, 7, 7, seed=6)[0]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    expected = normal.generate([prompt], params)[0].output_token_ids
    output = run_checked(speculative["target"], [prompt], params)[0]
    assert output.output_token_ids == expected
    assert len(expected) == max_tokens and output.finish_reason == "length"


def test_requests_that_do_not_speculate_share_the_step_and_keep_their_output(normal, speculative):
    """Penalties, seeded sampling and min_tokens decode normally beside speculating requests;
    logit bias and logprobs speculate."""
    prompts = random_prompts(5, 4, 30, seed=7)
    params = [
        SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, repetition_penalty=1.3),
        SamplingParams(max_tokens=20, temperature=0.9, seed=11, ignore_eos=True),
        SamplingParams(max_tokens=20, temperature=0.0, min_tokens=6),
        SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, logit_bias={5: 3.0, 9: -100.0}),
        SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=2),
    ]
    expected = normal.generate(prompts, params)
    engine = speculative["near"]
    outputs = run_checked(engine, prompts, params)
    for got, want in zip(outputs, expected):
        assert got.output_token_ids == want.output_token_ids
    assert outputs[4].logprobs == pytest.approx(expected[4].logprobs, abs=1e-4)
    for got, want in zip(outputs[4].top_logprobs, expected[4].top_logprobs):
        assert got.keys() == want.keys()
    assert_all_blocks_free(engine)


def test_min_tokens_beside_speculating_requests_counts_the_tokens_it_has(normal, speculative):
    """A min_tokens request decodes normally inside speculative steps: its stop token is held
    back until exactly min_tokens tokens are out, as without speculation."""
    prompts = random_prompts(2, 10, 20, seed=12)
    reference = normal.generate(prompts[:1], GREEDY)[0].output_token_ids
    index = next(i for i in range(3, len(reference)) if reference[i] not in reference[:i])
    held_back = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, min_tokens=index + 1,
                               stop_token_ids=(reference[index],))
    expected = normal.generate(prompts[:1], held_back)[0].output_token_ids
    assert expected[index] != reference[index]  # the stop token was held back at position `index`
    engine = speculative["target"]
    drafts_before = engine.stats().spec_decode_num_drafts
    outputs = run_checked(engine, prompts, [held_back, GREEDY])
    assert outputs[0].output_token_ids == expected
    assert engine.stats().spec_decode_num_drafts > drafts_before


def test_abort_mid_speculation_frees_both_caches(normal, speculative):
    engine = speculative["near"]
    prompts = random_prompts(3, 20, 40, seed=8)
    expected = [out.output_token_ids for out in normal.generate(prompts, GREEDY)]
    for index, prompt in enumerate(prompts):
        engine.add_request(f"abort-{index}", prompt, GREEDY)
    drafts_before = engine.stats().spec_decode_num_drafts
    collected = {f"abort-{index}": [] for index in range(3)}
    while engine.stats().spec_decode_num_drafts < drafts_before + 6:
        assert engine.has_unfinished_requests()
        for output in engine.step():
            collected[output.request_id] += output.new_token_ids
    aborted = engine.abort("abort-1")
    assert aborted.finish_reason == "abort"
    engine.check_consistency()
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            collected[output.request_id] += output.new_token_ids
            if output.finished:
                finished[output.request_id] = output
        engine.check_consistency()
    assert finished["abort-0"].output_token_ids == expected[0] == collected["abort-0"]
    assert finished["abort-2"].output_token_ids == expected[2]
    assert collected["abort-1"] == expected[1][: len(collected["abort-1"])]
    assert_all_blocks_free(engine)


def test_preemption_recomputes_both_caches(models, normal):
    engine = make_engine(models, "near", num_kv_blocks=12, block_size=8, enable_prefix_caching=False)
    prompts = random_prompts(4, 20, 30, seed=9)
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    expected = [out.output_token_ids for out in normal.generate(prompts, params)]
    outputs = run_checked(engine, prompts, params)
    assert [out.output_token_ids for out in outputs] == expected
    stats = engine.stats()
    assert stats.num_preemptions > 0 and stats.spec_decode_num_drafts > 0
    assert_all_blocks_free(engine)


def test_prefix_cache_hits_after_speculation_serve_the_same_tokens(normal, speculative):
    engine = speculative["near"]
    prompt = random_prompts(1, 40, 40, seed=10)[0]
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    first = run_checked(engine, [prompt], params)[0].output_token_ids
    # The second request's prompt is the first's whole sequence: its blocks, filled by accepted
    # runs, are served from the prefix cache.
    hits_before = engine.stats().prefix_cache_hits
    second = run_checked(engine, [prompt + first], params)[0].output_token_ids
    assert engine.stats().prefix_cache_hits - hits_before >= 64
    assert second == normal.generate([prompt + first], params)[0].output_token_ids


def test_speculation_turns_off_from_the_configured_batch_size(models):
    engine = make_engine(models, "target", speculative_disable_by_batch_size=3)
    prompts = random_prompts(3, 5, 10, seed=11)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    engine.generate(prompts, params)
    assert engine.stats().spec_decode_num_drafts == 0
    engine.generate(prompts[:2], params)
    assert engine.stats().spec_decode_num_drafts > 0


def test_counters_follow_vllm(speculative):
    engine = speculative["target"]
    before = engine.stats()
    engine.generate([[5, 6, 7]], SamplingParams(max_tokens=1 + 2 * (K + 1), temperature=0.0, ignore_eos=True))
    after = engine.stats()
    # One token from the prefill, then two steps that each accept all K drafts and add a bonus.
    assert after.spec_decode_num_drafts - before.spec_decode_num_drafts == 2
    assert after.spec_decode_num_draft_tokens - before.spec_decode_num_draft_tokens == 2 * K
    assert after.spec_decode_num_accepted_tokens - before.spec_decode_num_accepted_tokens == 2 * K


def test_configuration_is_checked(models, tmp_path):
    with pytest.raises(ConfigError, match="num_speculative_tokens"):
        EngineConfig(model="m", speculative_model="d")
    with pytest.raises(ConfigError, match="no speculative_model"):
        EngineConfig(model="m", num_speculative_tokens=3)
    with pytest.raises(ConfigError, match="positive"):
        EngineConfig(model="m", speculative_model="d", num_speculative_tokens=0)
    with pytest.raises(ConfigError, match="async_scheduling"):
        EngineConfig(model="m", speculative_model="d", num_speculative_tokens=2, async_scheduling=True)
    config = transformers.LlamaConfig(**{**COMMON, "vocab_size": COMMON["vocab_size"] + 16})
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "wide", safe_serialization=True)
    with pytest.raises(ConfigError, match="vocabulary"):
        make_engine({**models, "wide": tmp_path / "wide"}, "wide")


# Sampling keeps the target's distribution -----------------------------------------------


def test_rejection_sampling_draws_from_the_target_distribution():
    """Many rows with the same target p and a quite different draft q: the first token is
    distributed as p at the first position; the token after an accepted draft as p at the next."""
    vocab, rows = 6, 40_000
    p = torch.tensor([[0.30, 0.05, 0.25, 0.10, 0.20, 0.10], [0.10, 0.40, 0.05, 0.15, 0.10, 0.20]])
    q = torch.tensor([0.05, 0.40, 0.10, 0.30, 0.05, 0.10])
    torch.manual_seed(0)
    drafts = torch.multinomial(q, rows, replacement=True).unsqueeze(1)
    tokens = rejection_sample(p.expand(rows, 2, vocab), q.expand(rows, 1, vocab), drafts, [1] * rows,
                              [None] * rows)
    first = torch.tensor([row[0] for row in tokens])
    assert chisquare(torch.bincount(first, minlength=vocab).numpy(), (p[0] * rows).numpy()).pvalue > 0.001
    bonus = torch.tensor([row[1] for row in tokens if len(row) == 2])
    expected = p[1] * len(bonus)
    assert chisquare(torch.bincount(bonus, minlength=vocab).numpy(), expected.numpy()).pvalue > 0.001
    # And the acceptance rate is the theory's: sum over x of min(p(x), q(x)).
    assert len(bonus) / rows == pytest.approx(torch.minimum(p[0], q).sum().item(), abs=0.01)


def test_sampled_engine_output_follows_the_target_distribution(tmp_path):
    """End to end on an 8-token vocabulary: the sampled tokens of many identical requests against
    the target's own next-token distributions (transformers' forward), pooled over what came before."""
    vocab = 8
    tiny = {**COMMON, "vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    paths = {}
    for name, seed in (("target", 0), ("draft", 1)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**tiny))
            with torch.no_grad():
                for parameter in model.parameters():
                    if parameter.dim() > 1:
                        parameter.mul_(8.0)
        model.save_pretrained(tmp_path / name, safe_serialization=True)
        paths[name] = tmp_path / name
    prompt, num_requests = [3, 4, 5, 6], 800
    # Every request in one prefill step (its first token is sampled normally), then one decode
    # step in which all speculate a token: the second token is the draft's if accepted, else
    # the residual draw; the third is the bonus, or a normal decode after a rejection.
    engine = make_engine(paths, "draft", num_speculative_tokens=1, max_num_seqs=num_requests,
                         max_num_batched_tokens=4 * num_requests, speculative_disable_by_batch_size=num_requests + 1)
    torch.manual_seed(0)
    outputs = engine.generate([prompt] * num_requests,
                              SamplingParams(max_tokens=3, temperature=1.0, ignore_eos=True))
    stats = engine.stats()
    assert stats.spec_decode_num_drafts == num_requests
    assert 0 < stats.spec_decode_num_accepted_tokens < stats.spec_decode_num_draft_tokens
    target = transformers.LlamaForCausalLM.from_pretrained(paths["target"]).eval()
    tokens = torch.tensor([out.output_token_ids for out in outputs])
    with torch.no_grad():
        contexts = torch.tensor([prompt + [first, second] for first in range(vocab) for second in range(vocab)])
        logits = target(contexts).logits.double()
    # p(second | first) from the rows whose second token is 0, p(third | first, second) from all.
    second_given_first = logits[::vocab, -2].softmax(-1)
    third_given_both = logits[:, -1].softmax(-1)
    first_counts = torch.bincount(tokens[:, 0], minlength=vocab).double()
    second_expected = (first_counts.unsqueeze(1) * second_given_first).sum(0)
    assert chisquare(torch.bincount(tokens[:, 1], minlength=vocab).numpy(), second_expected.numpy()).pvalue > 0.001
    pair_counts = torch.bincount(tokens[:, 0] * vocab + tokens[:, 1], minlength=vocab * vocab).double()
    third_expected = (pair_counts.unsqueeze(1) * third_given_both).sum(0)
    assert chisquare(torch.bincount(tokens[:, 2], minlength=vocab).numpy(), third_expected.numpy()).pvalue > 0.001
