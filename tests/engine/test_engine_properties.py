"""Property test: random interleavings of add, abort and step on a real engine with a tiny KV
cache keep the block accounting consistent, end every request exactly once, and give the
same greedy tokens for the same prompt however it was batched, chunked, cached or preempted.
Plus the requests the engine must refuse at add_request."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runtime.engine import EngineConfig, LLMEngine, QueueFull, RequestOutput, RequestRejected, SamplingParams

from .tiny_models import VOCAB_SIZE

NUM_KV_BLOCKS = 12
BLOCK_SIZE = 4
MAX_MODEL_LEN = 64
# A tiny alphabet makes prompts share prefixes, so prefix-cache hits are common.
ALPHABET = (3, 4, 5)
FINISH_REASONS = {"length", "stop", "abort"}
MAX_DRAIN_STEPS = 500


def make_engine(model_dir, **overrides) -> LLMEngine:
    fields = dict(
        model=str(model_dir),
        dtype="float32",
        device="cpu",
        num_kv_blocks=NUM_KV_BLOCKS,
        block_size=BLOCK_SIZE,
        max_num_batched_tokens=24,
        max_num_seqs=4,
        max_model_len=MAX_MODEL_LEN,
        enable_prefix_caching=True,
        # A tiny model gains nothing from threads, and on a shared machine they make every step slow.
        num_threads=1,
    )
    fields.update(overrides)
    return LLMEngine(EngineConfig(**fields))


@pytest.fixture(scope="module", params=["sync", "async"])
def engine(tiny_llama, request) -> LLMEngine:
    """Both step loops: async scheduling (on by default only with CUDA) queues each step before
    the previous one's tokens are fetched, and must be indistinguishable from outside but for
    that one step of lag. Greedy tokens are checked across both, as the dict is shared."""
    return make_engine(tiny_llama, async_scheduling=request.param == "async")


@dataclass(frozen=True)
class Add:
    prompt: tuple[int, ...]
    params: SamplingParams


@dataclass(frozen=True)
class Abort:
    # Which added request to abort (modulo how many there are); None aborts an unknown id.
    pick: int | None


@dataclass(frozen=True)
class Step:
    pass


sampling_params = st.builds(
    SamplingParams,
    max_tokens=st.sampled_from(range(1, 13)),
    temperature=st.sampled_from([0.0, 1.0]),
    seed=st.integers(0, 2**16),
    stop_token_ids=st.sampled_from([(), ALPHABET[:1], ALPHABET]),
    ignore_eos=st.booleans(),
)
# Lengths drawn uniformly: st.lists and st.integers favour the smallest values, which never fill the cache.
prompts = st.sampled_from(range(1, 31)).flatmap(
    lambda length: st.lists(st.sampled_from(ALPHABET), min_size=length, max_size=length).map(tuple)
)
adds = st.builds(Add, prompt=prompts, params=sampling_params)
aborts = st.builds(Abort, pick=st.none() | st.integers(0, 100))
steps = st.just(Step())
# Adds outweigh steps so requests pile up and the 12-block cache forces preemptions.
operations = st.lists(st.one_of(adds, adds, adds, aborts, steps, steps), min_size=8, max_size=40)

request_ids = (f"req-{n}" for n in itertools.count())
# Greedy tokens seen so far for each prompt, across examples (the engine and model are shared).
greedy_tokens: dict[tuple[int, ...], list[int]] = {}


class Tracker:
    """What the test knows of every request it added, checked as outputs arrive."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.added: dict[str, Add] = {}
        self.finished: dict[str, RequestOutput] = {}

    def add(self, operation: Add) -> None:
        request_id = next(request_ids)
        self.engine.add_request(request_id, list(operation.prompt), operation.params)
        self.added[request_id] = operation

    def abort(self, operation: Abort) -> None:
        ids = list(self.added)
        request_id = "never-added" if operation.pick is None or not ids else ids[operation.pick % len(ids)]
        output = self.engine.abort(request_id)
        is_live = request_id in self.added and request_id not in self.finished
        assert (output is not None) == is_live
        if output is not None:
            assert output.finish_reason == "abort"
            self.record(output)

    def step(self) -> None:
        for output in self.engine.step():
            self.record(output)

    def record(self, output: RequestOutput) -> None:
        request_id = output.request_id
        assert request_id in self.added
        assert request_id not in self.finished, f"{request_id} produced output after it finished"
        operation = self.added[request_id]
        assert len(output.output_token_ids) <= operation.params.max_tokens
        assert output.prompt_token_ids == list(operation.prompt)
        if output.finished:
            assert output.finish_reason in FINISH_REASONS
            self.finished[request_id] = output
            if operation.params.greedy:
                check_greedy_tokens(operation.prompt, output.output_token_ids)


def check_greedy_tokens(prompt: tuple[int, ...], tokens: list[int]) -> None:
    """Greedy decoding of a prompt is one fixed token sequence: every output is a prefix of it."""
    known = greedy_tokens.setdefault(prompt, [])
    common = min(len(known), len(tokens))
    assert tokens[:common] == known[:common], f"greedy tokens for {list(prompt)} changed between requests"
    if len(tokens) > len(known):
        greedy_tokens[prompt] = list(tokens)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=operations)
def test_random_operations_keep_the_engine_consistent(engine, operations):
    assert not engine.has_unfinished_requests(), "an earlier example left requests behind"
    before = engine.stats()
    tracker = Tracker(engine)
    for operation in operations:
        if isinstance(operation, Add):
            tracker.add(operation)
        elif isinstance(operation, Abort):
            tracker.abort(operation)
        else:
            tracker.step()
        engine.check_consistency()

    for _ in range(MAX_DRAIN_STEPS):
        if not engine.has_unfinished_requests():
            break
        tracker.step()
        engine.check_consistency()
    assert not engine.has_unfinished_requests(), f"requests still unfinished after {MAX_DRAIN_STEPS} steps"

    assert set(tracker.finished) == set(tracker.added)
    for request_id, output in tracker.finished.items():
        params = tracker.added[request_id].params
        if output.finish_reason == "length":
            assert len(output.output_token_ids) == params.max_tokens
        if output.finish_reason == "stop":
            last = output.output_token_ids[-1]
            assert last in params.stop_token_ids or (not params.ignore_eos and last in engine.eos_token_ids)
    stats = engine.stats()
    assert stats.num_free_kv_blocks == engine.num_kv_blocks
    assert stats.num_requests_running == 0 and stats.num_requests_waiting == 0
    # Shown by --hypothesis-show-statistics: how often the examples reach these paths.
    event(f"preempted: {stats.num_preemptions > before.num_preemptions}")
    event(f"prefix cache hit: {stats.prefix_cache_hits > before.prefix_cache_hits}")


def test_requests_that_cannot_fit_are_rejected_with_the_numbers(engine):
    too_long = r"prompt \(60 tokens\) \+ max_tokens \(10\) = 70 exceeds max_model_len 64"
    with pytest.raises(RequestRejected, match=too_long):
        engine.add_request("too-long-for-model", [5] * 60, SamplingParams(max_tokens=10))
    with pytest.raises(RequestRejected, match=r"needs 13 KV blocks .* cache has 12; at most 48 tokens fit"):
        engine.add_request("too-long-for-cache", [5] * 40, SamplingParams(max_tokens=12))
    assert not engine.has_unfinished_requests()

    # Exactly the whole cache is allowed, and runs to the end.
    engine.add_request("fills-the-cache", [5] * 40, SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.0))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [output for output in engine.step() if output.finished]
    assert [len(output.output_token_ids) for output in outputs] == [8]
    assert engine.stats().num_free_kv_blocks == engine.num_kv_blocks


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ([], SamplingParams(), "the prompt is empty"),
        ([5, VOCAB_SIZE], SamplingParams(), f"token id {VOCAB_SIZE} is outside the vocabulary"),
        ([5, -1], SamplingParams(), "token id -1 is outside the vocabulary"),
        ([5, True], SamplingParams(), "must be integers"),
        ([5, 6], SamplingParams(stop_token_ids=(VOCAB_SIZE,)), "stop token id"),
    ],
)
def test_bad_requests_are_rejected_and_leave_no_trace(engine, prompt, params, message):
    with pytest.raises(RequestRejected, match=message):
        engine.add_request("bad", prompt, params)
    assert not engine.has_unfinished_requests()
    engine.check_consistency()


def test_a_request_id_in_use_is_rejected(engine):
    engine.add_request("same-id", [5, 6, 7], SamplingParams(max_tokens=2))
    with pytest.raises(RequestRejected, match="'same-id' is already in use"):
        engine.add_request("same-id", [8, 9], SamplingParams(max_tokens=2))
    assert engine.num_unfinished_requests == 1
    final = engine.abort("same-id")
    assert final.prompt_token_ids == [5, 6, 7]
    # Once finished, the id may be used again.
    engine.add_request("same-id", [8, 9], SamplingParams(max_tokens=2))
    engine.abort("same-id")
    assert engine.stats().num_free_kv_blocks == engine.num_kv_blocks


def test_a_full_waiting_queue_raises_queue_full(tiny_llama):
    engine = make_engine(tiny_llama, max_queue_size=2)
    engine.add_request("a", [5, 6, 7], SamplingParams(max_tokens=3))
    engine.add_request("b", [5, 6, 8], SamplingParams(max_tokens=3))
    with pytest.raises(QueueFull, match=r"full \(2 requests\)"):
        engine.add_request("c", [5, 6, 9], SamplingParams(max_tokens=3))
    assert engine.num_unfinished_requests == 2
    # The bound is on waiting requests: once these run, the queue has room again.
    engine.step()
    assert engine.stats().num_requests_waiting == 0
    engine.add_request("c", [5, 6, 9], SamplingParams(max_tokens=3))
    while engine.has_unfinished_requests():
        engine.step()
    engine.check_consistency()


def test_a_cache_smaller_than_max_model_len_is_named_at_start(tiny_llama, caplog):
    """12 blocks of 4 tokens hold 48 tokens of the 64 max_model_len allows: said once at start,
    and each request that needs more is refused with the numbers (above)."""
    caplog.set_level("WARNING", logger="runtime.engine.engine")
    make_engine(tiny_llama)
    assert "the KV cache holds 48 tokens, fewer than max_model_len=64" in caplog.text
    caplog.clear()
    make_engine(tiny_llama, num_kv_blocks=16)
    assert "KV cache holds" not in caplog.text
