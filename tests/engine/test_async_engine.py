"""AsyncLLMEngine: concurrent streams equal the synchronous engine's output, requests really
batch, leaving a stream frees its KV blocks, the event loop never waits on a model step,
and bad requests, full queues, failed steps and shutdown end streams instead of hanging them."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from runtime.engine import (
    AsyncLLMEngine,
    EngineConfig,
    EngineDead,
    LLMEngine,
    QueueFull,
    RequestOutput,
    RequestRejected,
    SamplingParams,
)

from .tiny_models import VOCAB_SIZE, random_prompts

NUM_KV_BLOCKS = 128
# Bound on every await: a bug shows as a failure, never as a hung suite.
TIMEOUT = 30.0
# How long a cancelled request may take to give its blocks back.
IDLE_TIMEOUT = 2.0
# How long a stream may stay open once shutdown or a failed step has ended its request.
END_TIMEOUT = 5.0
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
LONG = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)


def make_config(model_dir, **overrides) -> EngineConfig:
    # One torch thread: on a shared 2-core machine more threads spin against each other
    # and make a step 10-100x slower.
    settings = dict(model=str(model_dir), dtype="float32", device="cpu", num_kv_blocks=NUM_KV_BLOCKS, num_threads=1)
    settings.update(overrides)
    return EngineConfig(**settings)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """num_threads sets torch's process-wide thread count; later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["sync", "async"])
def start_engine(tiny_llama, request):
    """start_engine(**config overrides) -> a started AsyncLLMEngine, shut down after the test.
    Every test runs with both step loops (async scheduling is on by default only with CUDA)."""
    started: list[AsyncLLMEngine] = []

    def start(**overrides) -> AsyncLLMEngine:
        overrides.setdefault("async_scheduling", request.param == "async")
        engine = AsyncLLMEngine(make_config(tiny_llama, **overrides))
        engine.start()
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.shutdown()


@pytest.fixture
def engine(start_engine) -> AsyncLLMEngine:
    return start_engine()


def reference_tokens(model_dir, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    """What the synchronous engine generates for the same prompts, one batch."""
    engine = LLMEngine(make_config(model_dir))
    return [output.output_token_ids for output in engine.generate(prompts, params)]


async def collect(
    engine: AsyncLLMEngine, request_id: str, prompt: list[int], params: SamplingParams, into: list | None = None
) -> list[RequestOutput]:
    """Every output of one stream; `into` lets another coroutine watch them arrive."""
    outputs = [] if into is None else into
    async for output in engine.stream(request_id, prompt, params):
        outputs.append(output)
    return outputs


def assert_well_formed(outputs: list[RequestOutput], finish_reason: str) -> None:
    assert sum(output.finished for output in outputs) == 1, "exactly one output must be finished"
    final = outputs[-1]
    assert final.finished and final.finish_reason == finish_reason
    streamed = [token for output in outputs for token in output.new_token_ids]
    assert streamed == final.output_token_ids, "new_token_ids must add up to output_token_ids"


async def ended(task: asyncio.Task, what: str):
    """The task's result, or a failure (not a hung suite) if its stream never ends."""
    try:
        return await asyncio.wait_for(task, END_TIMEOUT)
    except TimeoutError:
        pytest.fail(f"{what}: the stream is still open {END_TIMEOUT}s later")


async def start_stream(
    engine: AsyncLLMEngine, request_id: str, prompt: list[int], params: SamplingParams, min_outputs: int = 1
) -> tuple[asyncio.Task, list[RequestOutput]]:
    """Consume a stream in a task; return once it has produced `min_outputs` outputs."""
    outputs: list[RequestOutput] = []
    task = asyncio.create_task(collect(engine, request_id, prompt, params, into=outputs))
    async with asyncio.timeout(TIMEOUT):
        while len(outputs) < min_outputs:
            await asyncio.sleep(0.002)
    return task, outputs


async def wait_until_idle(engine: AsyncLLMEngine) -> None:
    """Poll until no request runs or waits and every KV block is free again."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    while True:
        stats = engine.stats()
        idle = stats.num_requests_running == 0 and stats.num_requests_waiting == 0
        if idle and stats.num_free_kv_blocks == NUM_KV_BLOCKS:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"engine not idle {IDLE_TIMEOUT}s after the stream ended: {stats}")
        await asyncio.sleep(0.01)


def count_steps(monkeypatch, engine: AsyncLLMEngine, step_seconds: float) -> list[int]:
    """Count model steps; `step_seconds` pads each one with a sleep (GIL released)."""
    runner = engine.engine.runner
    execute = runner.execute
    steps = [0]

    def counted(scheduled):
        steps[0] += 1
        result = execute(scheduled)
        time.sleep(step_seconds)
        return result

    monkeypatch.setattr(runner, "execute", counted)
    return steps


# Batching through the async path --------------------------------------------------------


async def test_concurrent_streams_equal_the_sync_engine(engine, tiny_llama):
    prompts = random_prompts(24, 1, 70, seed=21)
    streams = [collect(engine, f"req-{index}", prompt, GREEDY) for index, prompt in enumerate(prompts)]
    results = await asyncio.wait_for(asyncio.gather(*streams), TIMEOUT)
    expected = reference_tokens(tiny_llama, prompts, GREEDY)
    for index, (outputs, tokens) in enumerate(zip(results, expected)):
        assert_well_formed(outputs, "length")
        assert outputs[-1].output_token_ids == tokens, f"request {index} differs from LLMEngine.generate"
    engine.engine.check_consistency()
    assert engine.stats().num_free_kv_blocks == NUM_KV_BLOCKS


async def test_concurrent_streams_run_in_one_batch(engine):
    prompts = random_prompts(16, 5, 40, seed=22)
    params = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    most_running = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal most_running
        while not done.is_set():
            most_running = max(most_running, engine.stats().num_requests_running)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    try:
        streams = [collect(engine, f"req-{index}", prompt, params) for index, prompt in enumerate(prompts)]
        await asyncio.wait_for(asyncio.gather(*streams), TIMEOUT)
    finally:
        done.set()
        await watcher
    assert most_running > 1, "16 concurrent streams never ran in the same step"


# Leaving a stream early ------------------------------------------------------------------


async def test_breaking_out_of_a_stream_frees_its_blocks(engine, monkeypatch):
    # Padded steps: 200 tokens take over a second, so only the abort can free the blocks in time.
    steps = count_steps(monkeypatch, engine, step_seconds=0.005)
    received = 0
    async with asyncio.timeout(TIMEOUT):
        async for output in engine.stream("long", [5, 6, 7, 8], LONG):
            received += 1
            assert not output.finished
            if received == 3:
                break
        await wait_until_idle(engine)
    assert steps[0] < LONG.max_tokens, "the request ran to the end instead of being aborted"
    engine.engine.check_consistency()


async def test_cancelling_the_consumer_frees_its_blocks(engine, monkeypatch):
    steps = count_steps(monkeypatch, engine, step_seconds=0.005)
    consumer, outputs = await start_stream(engine, "long", [5, 6, 7, 8], LONG, min_outputs=3)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(consumer, TIMEOUT)
    await wait_until_idle(engine)
    assert steps[0] < LONG.max_tokens, "the request ran to the end instead of being aborted"
    assert not any(output.finished for output in outputs)
    engine.engine.check_consistency()


# The event loop stays free ---------------------------------------------------------------


async def test_model_steps_never_block_the_event_loop(engine, monkeypatch):
    # Every step lasts at least step_seconds: a step run on the event loop would stall the
    # ticker for that long, while the engine thread leaves it ticking every few ms.
    step_seconds = 0.2
    count_steps(monkeypatch, engine, step_seconds)
    prompts = random_prompts(16, 5, 40, seed=23)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticks = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        streams = [collect(engine, f"req-{index}", prompt, params) for index, prompt in enumerate(prompts)]
        await asyncio.wait_for(asyncio.gather(*streams), TIMEOUT)
    finally:
        total = time.monotonic() - started
        done.set()
        await ticks
    assert len(gaps) > 20, "the ticker barely ran"
    assert max(gaps) < step_seconds, f"event loop stalled {max(gaps):.3f}s (a step lasts {step_seconds}s)"
    assert max(gaps) < 0.25 * total, f"event loop stalled {max(gaps):.3f}s of a {total:.3f}s generation"


# Errors ----------------------------------------------------------------------------------

BAD_REQUESTS = {
    "empty": ([], GREEDY, "empty"),
    "outside vocabulary": ([5, VOCAB_SIZE, 6], GREEDY, "outside the vocabulary"),
    "negative id": ([5, -1], GREEDY, "outside the vocabulary"),
    "too long": ([5] * 1000, SamplingParams(max_tokens=100), "exceeds max_model_len"),
}


async def test_bad_requests_are_rejected_without_disturbing_others(engine, tiny_llama):
    prompts = random_prompts(4, 5, 40, seed=24)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    good = [(await start_stream(engine, f"good-{index}", prompt, params))[0] for index, prompt in enumerate(prompts)]
    for name, (prompt, bad_params, message) in BAD_REQUESTS.items():
        stream = engine.stream(f"bad-{name}", prompt, bad_params)
        with pytest.raises(RequestRejected, match=message):
            await asyncio.wait_for(anext(stream), TIMEOUT)
    results = await asyncio.wait_for(asyncio.gather(*good), TIMEOUT)
    for outputs, tokens in zip(results, reference_tokens(tiny_llama, prompts, params)):
        assert_well_formed(outputs, "length")
        assert outputs[-1].output_token_ids == tokens
    # A rejected id was never registered: it can be used at once.
    final = await asyncio.wait_for(engine.generate("bad-empty", [5, 6], GREEDY), TIMEOUT)
    assert final.finish_reason == "length"
    await wait_until_idle(engine)


async def test_duplicate_request_id_is_rejected_while_in_flight(engine):
    first, outputs = await start_stream(engine, "same", [5, 6, 7], LONG)
    with pytest.raises(RequestRejected, match="already in use"):
        await asyncio.wait_for(anext(engine.stream("same", [8, 9], GREEDY)), TIMEOUT)
    assert_well_formed(await asyncio.wait_for(first, TIMEOUT), "length")
    assert len(outputs[-1].output_token_ids) == LONG.max_tokens
    # Once finished, the id is free again.
    final = await asyncio.wait_for(engine.generate("same", [8, 9], GREEDY), TIMEOUT)
    assert final.finish_reason == "length"


async def test_a_full_queue_refuses_the_excess_and_serves_the_rest(start_engine):
    # One running slot: while the blocker runs, every later request waits in the queue.
    engine = start_engine(max_queue_size=2, max_num_seqs=1)
    blocker, _ = await start_stream(engine, "blocker", [5, 6, 7], LONG)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    flood = [engine.generate(f"flood-{index}", [10 + index, 11], params) for index in range(6)]
    results = await asyncio.wait_for(asyncio.gather(*flood, return_exceptions=True), TIMEOUT)
    refused = [result for result in results if isinstance(result, QueueFull)]
    served = [result for result in results if isinstance(result, RequestOutput)]
    assert len(refused) == 4 and len(served) == 2, results
    assert all(output.finish_reason == "length" for output in served)
    assert_well_formed(await asyncio.wait_for(blocker, TIMEOUT), "length")
    await wait_until_idle(engine)


# Admission without the first token ------------------------------------------------------


def hold_steps(monkeypatch, engine: AsyncLLMEngine) -> threading.Event:
    """Every model step waits until the returned event is set."""
    runner = engine.engine.runner
    execute = runner.execute
    release = threading.Event()

    def held(scheduled):
        release.wait(TIMEOUT)
        return execute(scheduled)

    monkeypatch.setattr(runner, "execute", held)
    return release


async def test_open_admits_before_the_first_token(engine, monkeypatch):
    release = hold_steps(monkeypatch, engine)
    try:
        # No step can finish, yet the request is admitted and its stream handed over.
        stream = await asyncio.wait_for(engine.open("held", [5, 6, 7], GREEDY), 1.0)
        with pytest.raises(RequestRejected, match="already in use"):
            await engine.open("held", [8, 9], GREEDY)
    finally:
        release.set()
    async with stream:
        outputs = [output async for output in stream]
    assert_well_formed(outputs, "length")
    await wait_until_idle(engine)


async def test_open_refuses_at_once(engine):
    for name, (prompt, bad_params, message) in BAD_REQUESTS.items():
        with pytest.raises(RequestRejected, match=message):
            await engine.open(f"bad-{name}", prompt, bad_params)
    await wait_until_idle(engine)


async def test_an_admitted_stream_closed_or_dropped_unread_aborts_its_request(engine, monkeypatch):
    steps = count_steps(monkeypatch, engine, step_seconds=0.005)
    closed = await engine.open("closed", [5, 6, 7, 8], LONG)
    await closed.aclose()
    dropped = await engine.open("dropped", [9, 10, 11], LONG)
    del dropped  # never read nor closed: a caller cancelled right after admission
    await wait_until_idle(engine)
    assert steps[0] < LONG.max_tokens, "a request ran to the end instead of being aborted"
    engine.engine.check_consistency()


# Results and lifecycle -------------------------------------------------------------------


async def test_generate_returns_the_final_output(engine, tiny_llama):
    prompt = [5, 6, 7, 8, 9]
    final = await asyncio.wait_for(engine.generate("one", prompt, GREEDY), TIMEOUT)
    assert final.finished and final.finish_reason == "length"
    assert final.prompt_token_ids == prompt
    assert final.output_token_ids == reference_tokens(tiny_llama, [prompt], GREEDY)[0]


async def test_shutdown_aborts_streams_in_flight_and_refuses_new_ones(start_engine):
    engine = start_engine()
    consumer, _ = await start_stream(engine, "long", [5, 6, 7], LONG)
    await asyncio.to_thread(engine.shutdown)
    assert_well_formed(await ended(consumer, "a stream in flight at shutdown"), "abort")
    assert not engine.is_running
    with pytest.raises(EngineDead):
        await asyncio.wait_for(anext(engine.stream("late", [5, 6], GREEDY)), TIMEOUT)


async def test_shutdown_ends_a_stream_whose_request_is_still_on_its_way(start_engine, monkeypatch):
    """A request registered during a step, with shutdown before the next step, must end too."""
    engine = start_engine()
    in_step, release_step = threading.Event(), threading.Event()
    execute = engine.engine.runner.execute

    def held(scheduled):
        in_step.set()
        release_step.wait(TIMEOUT)
        return execute(scheduled)

    monkeypatch.setattr(engine.engine.runner, "execute", held)
    try:
        running, _ = await start_stream(engine, "running", [5, 6, 7], LONG, min_outputs=0)
        assert await asyncio.to_thread(in_step.wait, TIMEOUT)
        arriving, arriving_outputs = await start_stream(engine, "arriving", [8, 9], LONG, min_outputs=0)
        async with asyncio.timeout(TIMEOUT):
            while engine.num_waiting == 0:
                await asyncio.sleep(0.001)
        engine.shutdown(timeout=0)
    finally:
        release_step.set()
    assert_well_formed(await ended(running, "a stream in flight at shutdown"), "abort")
    try:
        await ended(arriving, "a stream registered before shutdown, its request not yet in the engine")
    except EngineDead:
        return
    assert_well_formed(arriving_outputs, "abort")


async def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(engine, monkeypatch):
    execute = engine.engine.runner.execute
    armed = threading.Event()
    failures: list[int] = []

    def fails_once_armed(scheduled):
        if armed.is_set() and not failures:
            failures.append(len(scheduled))
            raise RuntimeError("simulated kernel failure")
        return execute(scheduled)

    monkeypatch.setattr(engine.engine.runner, "execute", fails_once_armed)
    prompts = random_prompts(4, 5, 40, seed=25)
    streams = [(await start_stream(engine, f"req-{index}", prompt, LONG))[0] for index, prompt in enumerate(prompts)]
    armed.set()
    for outputs in await ended(asyncio.gather(*streams), "streams of a failed step"):
        assert_well_formed(outputs, "error")
        assert "engine step failed" in outputs[-1].error
        assert len(outputs[-1].output_token_ids) < LONG.max_tokens
    assert engine.num_failed_steps == 1
    await wait_until_idle(engine)
    final = await asyncio.wait_for(engine.generate("after", [5, 6, 7], GREEDY), TIMEOUT)
    assert final.finish_reason == "length" and len(final.output_token_ids) == GREEDY.max_tokens
    engine.engine.check_consistency()
