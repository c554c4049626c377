"""The logit bias and the repetition, frequency and presence penalties: greedy tokens equal
transformers' generate with the same logits processors (its own RepetitionPenaltyLogitsProcessor,
and OpenAI's formulas for the others, written out below), alone, together, in a batch with
requests that use none, with async scheduling (whose newest tokens are still on the device when
the next step is sampled), on a GPU where there is one, and after a preemption."""

from __future__ import annotations

import pytest
import torch
import transformers

from runtime.engine import EngineConfig, LLMEngine, RequestRejected, SamplingParams

from .tiny_models import random_prompts

MAX_TOKENS = 24
PROMPTS = random_prompts(3, 6, 20, seed=31)


class OpenAIPenalties(transformers.LogitsProcessor):
    """OpenAI's frequency and presence penalties over the tokens generated so far."""

    def __init__(self, prompt_len: int, frequency: float, presence: float) -> None:
        self.prompt_len, self.frequency, self.presence = prompt_len, frequency, presence

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        counts = torch.zeros_like(scores)
        generated = input_ids[:, self.prompt_len:]
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0)


class LogitBias(transformers.LogitsProcessor):
    def __init__(self, bias: dict[int, float]) -> None:
        self.bias = bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for token, value in self.bias.items():
            scores[:, token] += value
        return scores


@pytest.fixture(scope="module")
def hf_model(tiny_llama):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32,
                                                              attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None
    return model


def reference(model, prompt: list[int], params: SamplingParams) -> list[int]:
    """transformers' greedy generate with the processors in vLLM's order."""
    processors = transformers.LogitsProcessorList()
    if params.logit_bias:
        processors.append(LogitBias(params.logit_bias))
    if params.repetition_penalty != 1.0:
        processors.append(transformers.RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.frequency_penalty or params.presence_penalty:
        processors.append(OpenAIPenalties(len(prompt), params.frequency_penalty, params.presence_penalty))
    with torch.no_grad():
        generated = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=params.max_tokens, do_sample=False, pad_token_id=0,
                                   logits_processor=processors)
    return generated[0, len(prompt):].tolist()


def make_engine(model_dir, **overrides) -> LLMEngine:
    settings = dict(model=str(model_dir), dtype="float32", device="cpu", num_kv_blocks=128, async_scheduling=False)
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


ON_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module", params=[
    ("cpu", False), ("cpu", True),
    pytest.param(("cuda", True), marks=pytest.mark.skipif(not ON_CUDA, reason="needs a GPU")),
], ids=["sync", "async", "cuda-async"])
def engine(request, tiny_llama) -> LLMEngine:
    device, async_scheduling = request.param
    return make_engine(tiny_llama, device=device, async_scheduling=async_scheduling)


def greedy(**settings) -> SamplingParams:
    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, **settings)


SETTINGS = {
    "repetition": dict(repetition_penalty=1.5),
    "repetition_below_1": dict(repetition_penalty=0.8),
    "frequency": dict(frequency_penalty=0.4),
    "presence": dict(presence_penalty=0.6),
    "negative_frequency": dict(frequency_penalty=-0.5),
    "logit_bias": dict(logit_bias={5: 4.0, 17: -100.0, 40: 2.5}),
    "all": dict(logit_bias={5: 3.0}, repetition_penalty=1.2, frequency_penalty=0.7, presence_penalty=0.4),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_greedy_tokens_equal_transformers_with_the_same_processors(engine, hf_model, name):
    params = greedy(**SETTINGS[name])
    outputs = engine.generate(PROMPTS, params)
    plain = engine.generate(PROMPTS, greedy())
    for prompt, output, unpenalized in zip(PROMPTS, outputs, plain):
        assert output.output_token_ids == reference(hf_model, prompt, params)
    # The setting changed something, so the comparison above could have failed.
    assert [output.output_token_ids for output in outputs] != [output.output_token_ids for output in plain]
    engine.check_consistency()


def test_a_penalized_request_leaves_the_rest_of_its_batch_alone(engine, hf_model):
    params = [greedy(**SETTINGS["all"]), greedy(), greedy(frequency_penalty=1.0), greedy()]
    prompts = PROMPTS + PROMPTS[:1]
    outputs = engine.generate(prompts, params)
    for prompt, param, output in zip(prompts, params, outputs):
        assert output.output_token_ids == reference(hf_model, prompt, param)


def test_a_strong_presence_penalty_stops_repeats(engine):
    output = engine.generate(PROMPTS[:1], greedy(presence_penalty=2.0, logit_bias={t: 30.0 for t in range(8)}))[0]
    tokens = output.output_token_ids
    # The bias pulls every step towards tokens 0-7; after each is used once, the penalty of 2 is
    # not enough against a bias of 30, so they repeat, but none before all eight were used.
    assert sorted(tokens[:8]) == list(range(8))


def test_seeded_sampling_with_penalties_is_the_same_sync_and_async(tiny_llama):
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.9, seed=4, ignore_eos=True, **SETTINGS["all"])
    results = []
    for async_scheduling in (False, True):
        engine = make_engine(tiny_llama, async_scheduling=async_scheduling)
        results.append([output.output_token_ids for output in engine.generate(PROMPTS, params)])
    assert results[0] == results[1]


def test_penalties_survive_a_preemption(tiny_llama, hf_model):
    # Six blocks of 16 tokens for three sequences growing to 44 tokens: they cannot all stay, so
    # the scheduler preempts and recomputes; the output counted so far must carry over.
    engine = make_engine(tiny_llama, num_kv_blocks=6, block_size=16)
    params = greedy(**SETTINGS["all"])
    outputs = engine.generate(PROMPTS, params)
    assert engine.scheduler.num_preemptions > 0
    for prompt, output in zip(PROMPTS, outputs):
        assert output.output_token_ids == reference(hf_model, prompt, params)


def test_a_logit_bias_outside_the_vocabulary_is_rejected(engine):
    with pytest.raises(RequestRejected, match=r"logit_bias token id 5000 is outside the vocabulary \[0, "):
        engine.add_request("bias", PROMPTS[0], greedy(logit_bias={5000: 1.0}))


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(presence_penalty=2.5), r"presence_penalty must be in \[-2, 2\], got 2.5"),
        (dict(frequency_penalty=-3), r"frequency_penalty must be in \[-2, 2\], got -3"),
        (dict(frequency_penalty=float("inf")), r"frequency_penalty must be in \[-2, 2\], got inf"),
        (dict(repetition_penalty=0.0), r"repetition_penalty must be in \[0.01, 10\] \(1 disables it\), got 0.0"),
        (dict(repetition_penalty=1e-300), r"repetition_penalty must be in \[0.01, 10\]"),
        (dict(repetition_penalty=11), r"repetition_penalty must be in \[0.01, 10\]"),
        (dict(repetition_penalty="2"), r"repetition_penalty must be in \[0.01, 10\]"),
        (dict(logit_bias={1: 100.5}), r"each logit_bias value must be in \[-100, 100\], got 100.5 for token 1"),
        (dict(logit_bias={-2: 1.0}), r"logit_bias keys must be token ids \(integers >= 0\), got -2"),
        (dict(logit_bias={"7": 1.0}), r"logit_bias keys must be token ids"),
        (dict(logit_bias={token: 1.0 for token in range(301)}), "logit_bias may bias at most 300 tokens, got 301"),
        (dict(logit_bias=[1, 2]), "logit_bias must map token ids to biases"),
    ],
)
def test_invalid_settings_raise_a_clear_value_error(settings, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**settings)


def test_defaults_leave_the_logits_alone():
    params = SamplingParams(logit_bias={})
    assert params.logit_bias is None and not params.penalizes
    assert SamplingParams(repetition_penalty=1).penalizes is False
