"""Structured outputs in the engine, on a tiny random-weight Llama with a byte-level tokenizer: every
answer under a JSON schema parses and validates (greedy and seeded sampling, under preemption,
chunked prefill and async scheduling); a regex, a choice and a grammar hold too; an unconstrained
row beside a constrained one is untouched; a constraint that cannot be compiled is refused without
disturbing anything else."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from runtime.engine import AsyncLLMEngine, EngineConfig, LLMEngine, RequestRejected, SamplingParams
from runtime.engine.grammar import apply_grammar_bitmask
from runtime.engine.structured_output import MAX_STRUCTURED_OUTPUT_CHARS, StructuredOutput

from tests.servers import REPO_ROOT

from .tiny_models import random_prompts

# Bounded schemas: a random model must be able to finish them well within MAX_TOKENS.
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                           "active": {"type": "boolean"}},
          "required": ["name", "age", "active"], "additionalProperties": False}
ORDER = {"type": "object", "properties": {
    "status": {"enum": ["pending", "shipped", "delivered"]},
    "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "maxLength": 5},
                                         "quantity": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["sku", "quantity"], "additionalProperties": False}},
    "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 4}]}},
    "required": ["status", "items", "note"], "additionalProperties": False}
SCHEMAS = [PERSON, ORDER]
MAX_TOKENS = 240
PROMPTS = random_prompts(4, 3, 12, seed=5)


def make_engine(model_dir, **overrides) -> LLMEngine:
    settings = dict(model=str(model_dir), dtype="float32", device="cpu", num_kv_blocks=256, block_size=8,
                    max_num_seqs=8, num_threads=1, max_model_len=1024)
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


@pytest.fixture(scope="module")
def engine(tiny_llama_with_tokenizer) -> LLMEngine:
    return make_engine(tiny_llama_with_tokenizer)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_with_tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(tiny_llama_with_tokenizer))


def constrained(schema: dict, **fields) -> SamplingParams:
    return SamplingParams(max_tokens=MAX_TOKENS, structured_output=StructuredOutput(json=schema), **fields)


def answer(tokenizer, output) -> str:
    return tokenizer.decode(output.output_token_ids, skip_special_tokens=True)


def assert_valid(tokenizer, output, schema: dict) -> None:
    assert output.finish_reason == "stop", f"unfinished after {len(output.output_token_ids)} tokens"
    jsonschema.validate(json.loads(answer(tokenizer, output)), schema)


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, seed=7),
                                      dict(temperature=0.8, top_p=0.9, top_k=40, seed=3)],
                         ids=["greedy", "seeded", "top-p-top-k"])
def test_every_answer_parses_and_validates(engine, tokenizer, sampling):
    params = [constrained(schema, **sampling) for schema in SCHEMAS for _ in range(2)]
    outputs = engine.generate(PROMPTS, params)
    for output, request in zip(outputs, params):
        assert_valid(tokenizer, output, json.loads(request.structured_output.json))


def test_seeded_answers_are_reproducible_and_penalties_and_logprobs_still_apply(engine, tokenizer):
    params = constrained(PERSON, temperature=1.0, seed=11, logprobs=True, top_logprobs=2, repetition_penalty=1.3,
                         frequency_penalty=0.5, logit_bias={5: 3.0})
    first, second = engine.generate([PROMPTS[0]] * 2, [params, params])
    assert first.output_token_ids == second.output_token_ids
    assert_valid(tokenizer, first, PERSON)
    # Logprobs are the model's own, one per token, whatever the grammar forbade.
    assert len(first.logprobs) == len(first.top_logprobs) == len(first.output_token_ids)


def test_an_unconstrained_row_beside_a_constrained_one_is_untouched(engine):
    for plain in (SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True),
                  SamplingParams(max_tokens=24, temperature=1.0, seed=5, ignore_eos=True, logprobs=True)):
        alone = engine.generate([PROMPTS[1]], plain)[0]
        together = engine.generate([PROMPTS[0], PROMPTS[1], PROMPTS[2]],
                                   [constrained(PERSON, temperature=0.0), plain, constrained(ORDER, temperature=0.0)])
        assert together[1].output_token_ids == alone.output_token_ids
        # Batched with other rows, float32 sums may round differently: logprobs agree to rounding.
        assert together[1].logprobs == pytest.approx(alone.logprobs, rel=1e-5) if alone.logprobs else True


def test_max_tokens_before_the_end_finishes_by_length(engine, tokenizer):
    output = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=3, temperature=0.0,
                                                          structured_output=StructuredOutput(json=ORDER)))[0]
    assert output.finish_reason == "length" and len(output.output_token_ids) == 3
    assert answer(tokenizer, output).startswith("{")


@pytest.mark.parametrize("overrides", [dict(num_kv_blocks=36), dict(max_num_batched_tokens=8),
                                       dict(async_scheduling=True), dict(num_kv_blocks=36, async_scheduling=True)],
                         ids=["preemption", "chunked-prefill", "async", "async-preemption"])
def test_preemption_chunked_prefill_and_async_scheduling_keep_answers_valid_and_the_same(
        tiny_llama_with_tokenizer, engine, tokenizer, overrides):
    prompts = random_prompts(6, 10, 30, seed=8)
    params = [constrained(SCHEMAS[index % 2], temperature=0.0 if index % 3 else 0.9, seed=index)
              for index in range(len(prompts))]
    expected = engine.generate(prompts, params)
    other = make_engine(tiny_llama_with_tokenizer, max_num_seqs=6, **overrides)
    outputs = other.generate(prompts, params)
    if "num_kv_blocks" in overrides:
        assert other.stats().num_preemptions > 0
    for want, got, request in zip(expected, outputs, params):
        # A preempted request is recomputed from the tokens its grammar has already taken: were
        # they fed to it again, the answer would differ or fail.
        assert got.output_token_ids == want.output_token_ids
        assert_valid(tokenizer, got, json.loads(request.structured_output.json))
    other.check_consistency()
    assert other.stats().num_free_kv_blocks == other.num_kv_blocks


def test_prefix_cache_hits_keep_answers_valid(engine, tokenizer):
    shared = PROMPTS[3] * 4
    outputs = engine.generate([shared + [7], shared + [9]], constrained(PERSON, temperature=0.0))
    assert engine.stats().prefix_cache_hits > 0
    for output in outputs:
        assert_valid(tokenizer, output, PERSON)


@pytest.mark.parametrize(("constraint", "check"), [
    (StructuredOutput(regex=r"[0-9]{3}-[a-z]{2,4}"), lambda text: re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", text)),
    (StructuredOutput(choice=("red", "green", "blue")), lambda text: text in ("red", "green", "blue")),
    (StructuredOutput(grammar='root ::= "(" [a-c]{1,3} ")" | "none"'),
     lambda text: re.fullmatch(r"none|\([a-c]{1,3}\)", text)),
    (StructuredOutput(grammar='start: "x" NUMBER\nNUMBER: /[0-9]{1,2}/'),
     lambda text: re.fullmatch(r"x[0-9]{1,2}", text)),
    (StructuredOutput(json_object=True), lambda text: text.startswith("{")),
], ids=["regex", "choice", "gbnf", "lark", "json-object"])
def test_regex_choice_grammar_and_json_object(engine, tokenizer, constraint, check):
    for sampling in (dict(temperature=0.0), dict(temperature=1.0, seed=2)):
        output = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=60, structured_output=constraint,
                                                              **sampling))[0]
        text = answer(tokenizer, output)
        assert check(text), text
        # Any JSON object may run on past max_tokens; the others end well within it.
        assert output.finish_reason == "stop" or constraint.json_object


@pytest.mark.parametrize(("constraint", "message"), [
    (dict(regex="([a-z"), "regex cannot be compiled"),
    (dict(grammar="root ::= ("), "grammar cannot"),
    (dict(json={"type": "array", "uniqueItems": True}, strict=True), "uniqueItems"),
    (dict(json='{"type": "array", "items": ' * 300 + '{"type": "integer"}' + "}" * 300), "recursion limit"),
], ids=["regex", "grammar", "strict-unsupported-keyword", "too-deep"])
def test_a_constraint_that_does_not_compile_is_refused(engine, constraint, message):
    with pytest.raises(RequestRejected, match=message):
        engine.add_request("bad", PROMPTS[0], SamplingParams(structured_output=StructuredOutput(**constraint)))
    assert not engine.has_unfinished_requests()


async def test_a_compile_past_the_time_limit_is_refused_and_the_engine_goes_on(tiny_llama_with_tokenizer):
    engine = make_engine(tiny_llama_with_tokenizer, grammar_compile_timeout=0.05)
    compiler = engine.grammar_compiler
    build = compiler._build
    # Compiles here take a millisecond: this one is made to take longer than the limit.
    compiler._build = lambda constraint: time.sleep(0.3) or build(constraint)
    with pytest.raises(RequestRejected, match="did not compile within 0.05 s; simplify it"):
        engine.add_request("sync", PROMPTS[0], SamplingParams(structured_output=StructuredOutput(regex="[0-9]{4}")))
    async_engine = AsyncLLMEngine(engine=engine)
    async_engine.start()
    try:
        with pytest.raises(RequestRejected, match="did not compile within"):
            await async_engine.generate("async", PROMPTS[0], SamplingParams(structured_output=StructuredOutput(
                regex="[0-9]{5}")))
        assert (await async_engine.generate("plain", PROMPTS[0], SamplingParams(max_tokens=2))).finish_reason
    finally:
        async_engine.shutdown()


def test_without_strict_unsupported_keywords_are_ignored(engine):
    lenient = StructuredOutput(json={"type": "array", "uniqueItems": True, "maxItems": 2, "items": {"type": "boolean"}})
    output = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=60, temperature=0.0,
                                                          structured_output=lenient))[0]
    assert output.finish_reason == "stop"


@pytest.mark.parametrize(("fields", "message"), [
    (dict(), "exactly one of json, json_object, regex, choice, grammar; got none"),
    (dict(regex="a", choice=("a",)), "got regex and choice"),
    (dict(json={"type": "string", "pattern": "a" * MAX_STRUCTURED_OUTPUT_CHARS}), "at most 32768"),
    (dict(json="[1, 2]"), "must be a JSON object"),
    (dict(json="{oops"), "not valid JSON"),
    (dict(choice=("a",) * 257), "at most 256"),
])
def test_malformed_or_oversized_constraints_are_refused_when_built(fields, message):
    with pytest.raises(ValueError, match=message):
        StructuredOutput(**fields)


def test_compiled_grammars_are_cached_by_canonical_schema(engine):
    compiler = engine.grammar_compiler
    spaced = StructuredOutput(json=json.dumps(PERSON, indent=4))
    assert spaced.key == StructuredOutput(json=PERSON).key
    assert compiler._submit(spaced) is compiler._submit(StructuredOutput(json=PERSON))
    reordered = StructuredOutput(json=dict(reversed(PERSON.items())))
    assert reordered.key != spaced.key


def test_an_engine_without_a_tokenizer_refuses_structured_outputs(tiny_llama):
    engine = make_engine(tiny_llama)
    with pytest.raises(RequestRejected, match="need the model's tokenizer"):
        engine.add_request("x", PROMPTS[0], constrained(PERSON))
    assert engine.generate([PROMPTS[0]], SamplingParams(max_tokens=2))[0].finish_reason == "length"


async def test_the_async_engine_compiles_off_its_loop_and_a_bad_request_disturbs_no_other(tiny_llama_with_tokenizer,
                                                                                         tokenizer):
    engine = AsyncLLMEngine(engine=make_engine(tiny_llama_with_tokenizer))
    engine.start()
    try:
        plain = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
        good = engine.generate("good", PROMPTS[0], constrained(PERSON, temperature=0.0))
        other = engine.generate("plain", PROMPTS[1], plain)
        bad = engine.generate("bad", PROMPTS[2], SamplingParams(structured_output=StructuredOutput(regex="(")))
        results = await asyncio.gather(good, other, bad, return_exceptions=True)
        assert_valid(tokenizer, results[0], PERSON)
        assert len(results[1].output_token_ids) == 16
        assert isinstance(results[2], RequestRejected)
        assert engine.is_running and engine.num_failed_steps == 0
    finally:
        engine.shutdown()


# Bounded schemas for the property test, each with a strategy for its instances (hypothesis-jsonschema
# would write those, but its latest release, 0.23.1, fails on object schemas under hypothesis 6.170):
# every schema has finite answers that a random model reaches.
def _integer(low: int, span: int):
    return {"type": "integer", "minimum": low, "maximum": low + span}, st.integers(low, low + span)


def _enum(values: list[str]):
    return {"enum": values}, st.sampled_from(values)


def _string(length: int):
    return {"type": "string", "maxLength": length}, st.text(max_size=length)


def _array(item, most: int):
    schema, instances = item
    return {"type": "array", "items": schema, "maxItems": most}, st.lists(instances, max_size=most)


def _object(properties: dict):
    schema = {"type": "object", "properties": {name: each[0] for name, each in properties.items()},
              "required": sorted(properties), "additionalProperties": False}
    return schema, st.fixed_dictionaries({name: each[1] for name, each in properties.items()})


_LEAVES = st.one_of(
    st.builds(_integer, st.integers(-50, 50), st.integers(0, 100)),
    st.just(({"type": "boolean"}, st.booleans())),
    st.just(({"type": "null"}, st.none())),
    st.builds(_enum, st.lists(st.sampled_from(["a", "bc", "xyz", "0"]), min_size=1, max_size=3, unique=True)),
    st.builds(_string, st.integers(0, 4)),
)
BOUNDED_SCHEMAS = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.builds(_array, children, st.integers(0, 2)),
        st.dictionaries(st.sampled_from(["a", "b", "id", "ok"]), children, min_size=1, max_size=3).map(_object),
    ),
    max_leaves=5,
)


@settings(max_examples=12, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema_and_instances=BOUNDED_SCHEMAS, data=st.data())
def test_property_any_bounded_schema_accepts_its_instances_and_constrains_answers(engine, tokenizer,
                                                                                 schema_and_instances, data):
    schema, instances = schema_and_instances
    # Complete: a valid instance, written as JSON, is accepted token by token.
    instance = data.draw(instances, label="instance")
    grammar = engine.grammar_compiler.compile(StructuredOutput(json=schema))
    token_ids = tokenizer.encode(json.dumps(instance), add_special_tokens=False)
    assert all(grammar.accept(token) for token in token_ids), grammar.error
    # Sound: the model's answers validate, greedy and sampled.
    outputs = engine.generate([PROMPTS[0]] * 2, [constrained(schema, temperature=0.0),
                                                 constrained(schema, temperature=1.0, seed=1)])
    for output in outputs:
        assert_valid(tokenizer, output, schema)


@pytest.mark.parametrize("rows", [[0, 2], [2, 0], [0, 1, 2], [1, 2, 0]])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_the_bitmask_forbids_exactly_the_clear_bits_in_the_chosen_rows(device, rows):
    vocab_size = 77
    bitmask = torch.randint(-2**31, 2**31 - 1, (len(rows), 3), dtype=torch.int32,
                            generator=torch.Generator().manual_seed(0), pin_memory=device == "cuda")
    logits = torch.arange(3 * vocab_size, dtype=torch.float32, device=device).view(3, vocab_size)
    expected = logits.cpu().clone()
    apply_grammar_bitmask(logits, rows, bitmask)
    for position, row in enumerate(rows):
        words = bitmask[position].tolist()
        allowed = [bool(words[token // 32] >> (token % 32) & 1) for token in range(vocab_size)]
        expected[row, [token for token in range(vocab_size) if not allowed[token]]] = float("-inf")
    assert torch.equal(logits.cpu(), expected)


class RecordingSampler:
    """The engine's sampler, noting "sample" in `events` each time a step samples."""

    def __init__(self, sampler, events: list[str]) -> None:
        self.sampler = sampler
        self.events = events

    def __call__(self, *args):
        self.events.append("sample")
        return self.sampler(*args)

    def __getattr__(self, name: str):
        return getattr(self.sampler, name)


def test_without_async_scheduling_the_masks_fill_beside_the_forward_pass(tiny_llama_with_tokenizer, tokenizer):
    """A synchronous step starts its constrained rows' mask fill before the forward pass and
    waits for it only when it samples; the answer still validates."""
    engine = make_engine(tiny_llama_with_tokenizer, async_scheduling=False)
    events: list[str] = []
    execute, start = engine.runner.execute, engine.sampler.start_grammar_masks
    engine.runner.execute = lambda scheduled: events.append("forward") or execute(scheduled)
    engine.sampler.start_grammar_masks = lambda seqs: events.append("fill") or start(seqs)
    engine.sampler = RecordingSampler(engine.sampler, events)
    [output] = engine.generate([PROMPTS[0]], constrained(PERSON, temperature=0.0))
    assert_valid(tokenizer, output, PERSON)
    steps = " ".join(events).split("sample")[:-1]
    assert len(steps) > 5 and all(step.strip() == "fill forward" for step in steps), events


def test_under_async_scheduling_a_constrained_step_waits_only_after_queueing_its_forward_pass(
        tiny_llama_with_tokenizer):
    """The one sync structured outputs add: a step holding a constrained row waits for the previous
    step's tokens after its own forward pass is queued and before it is sampled; a step without one
    never waits before it is sampled."""
    for schema in (PERSON, None):
        engine = make_engine(tiny_llama_with_tokenizer, async_scheduling=True)
        events: list[str] = []
        execute, launch = engine.runner.execute, engine._launch

        def recording_launch(*args):
            launched = launch(*args)
            if launched is not None:
                fetch = launched.pending.fetch
                launched.pending.fetch = lambda: events.append("fetch") or fetch()
            return launched

        engine.runner.execute = lambda scheduled: events.append("forward") or execute(scheduled)
        engine.sampler = RecordingSampler(engine.sampler, events)
        engine._launch = recording_launch
        params = constrained(schema, temperature=0.0) if schema else SamplingParams(max_tokens=20, temperature=0.0)
        engine.generate([PROMPTS[0]], params)
        steps = " ".join(events).split("forward")[2:]  # from the second step on, each has a previous one
        expected = " sample " if schema is None else " fetch sample "
        assert len(steps) > 5 and all(step.startswith(expected) for step in steps[:-1]), events


def test_the_tokenizer_classes_import_in_the_background():
    """The engine's start-up imports no transformers; the predictor has its tokenizer classes
    imported on a thread once it is ready, before a constrained request needs them."""
    script = (
        "import sys\n"
        "from runtime.engine import import_tokenizer_support_in_background\n"
        "assert 'transformers' not in sys.modules\n"
        "import_tokenizer_support_in_background().join()\n"
        "assert 'transformers.tokenization_utils_base' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
