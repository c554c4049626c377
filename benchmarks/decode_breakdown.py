"""Where a CPU decode step's time goes, on a demo model with its real forward, at small batches.

Three layers, each timed alone: (1) `LLMEngine.step()` in a loop, its time per step, then the same
steps with every part of the forward and of the step timed by category (matmuls, LM head,
attention, norms, RoPE, activation, embedding, the rest of the forward; sampling, scheduling,
preparing the inputs, the rest of the step); (2) `AsyncLLMEngine` in this process: the gap
between a stream's outputs as an asyncio reader sees them, so (2) - (1) is the hand-off from the
engine thread to the event loop. The HTTP/SSE and transformer hops are serve_load.py's `direct`
and `transformer` targets (BENCHMARKS.md, issue 24).

    PYTHONPATH=. .venv/bin/python benchmarks/decode_breakdown.py --size large --num_threads 2 --batch_sizes 1,4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

from runtime.demo import DEMO_SIZES, build_demo_model
from runtime.engine import AsyncLLMEngine, EngineConfig, LLMEngine, SamplingParams
from runtime.engine.models import llama_family

# A prompt of fixed ids: the demo vocabulary's ordinary tokens.
FIRST_ORDINARY_ID = 5
WARM_UP_STEPS = 8


class NestedClock:
    """Seconds per category, each call's own time (its wrapped callees' time excluded)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._children: list[float] = []

    def wrap(self, category: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            self._children.append(0.0)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.seconds[category] += elapsed - self._children.pop()
                if self._children:
                    self._children[-1] += elapsed

        return timed


class TimedSampler:
    """The engine's sampler, its calls timed; its other methods (grammar masks) as they are."""

    def __init__(self, sampler: Callable, timed: Callable) -> None:
        self._sampler = sampler
        self._timed = timed

    def __call__(self, *args, **kwargs):
        return self._timed(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._sampler, name)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", choices=tuple(DEMO_SIZES), default="large")
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument("--batch_sizes", default="1,4")
    parser.add_argument("--prompt_tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64, help="timed decode steps per batch size and layer")
    args = parser.parse_args()
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    return args


def build_engine(args: argparse.Namespace) -> LLMEngine:
    """The engine as the predictor builds it from its defaults."""
    return LLMEngine(EngineConfig(model=str(build_demo_model(args.size)), num_threads=args.num_threads))


def sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_tokens=WARM_UP_STEPS + args.steps + 2, temperature=0.0, ignore_eos=True)


def prompt(args: argparse.Namespace, index: int) -> list[int]:
    return [FIRST_ORDINARY_ID + (index * 7 + position) % 1000 for position in range(args.prompt_tokens)]


def decode_steps(engine: LLMEngine, args: argparse.Namespace, batch: int, tag: str,
                 clock: NestedClock | None = None) -> tuple[list[float], dict[str, float]]:
    """Seconds of each of `args.steps` decode steps of `batch` requests (all prefilled first),
    and what `clock` counted in those steps alone."""
    for index in range(batch):
        engine.add_request(f"{tag}-{index}", prompt(args, index), sampling(args))
    decoding: set[str] = set()
    while len(decoding) < batch:
        decoding.update(output.request_id for output in engine.step())
    for _ in range(WARM_UP_STEPS):
        engine.step()
    if clock is not None:
        clock.seconds.clear()
    seconds = []
    for _ in range(args.steps):
        started = time.perf_counter()
        engine.step()
        seconds.append(time.perf_counter() - started)
    counted = dict(clock.seconds) if clock is not None else {}
    while engine.has_unfinished_requests():
        engine.step()
    return seconds, counted


def instrument(engine: LLMEngine) -> NestedClock:
    """Time every part of the step and of the forward by category."""
    clock = NestedClock()
    model = engine.runner.fast_forward  # the llama-family forward the runner runs
    ops = model.ops
    for layer in model.layers:
        for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            module = getattr(layer, name)
            module.forward = clock.wrap("matmuls (q/k/v, o, gate/up, down)", module.forward)
    model.lm_head.forward = clock.wrap("LM head", model.lm_head.forward)
    model.embed_tokens.forward = clock.wrap("embedding", model.embed_tokens.forward)
    llama_family.paged_attention = clock.wrap("attention (KV write, paged decode)", llama_family.paged_attention)
    ops.rms_norm = clock.wrap("norms and residual adds", ops.rms_norm)
    ops.add_rms_norm = clock.wrap("norms and residual adds", ops.add_rms_norm)
    ops.rope_for_step = clock.wrap("RoPE tables", ops.rope_for_step)
    ops.rotate = clock.wrap("RoPE apply", ops.rotate)
    ops.gated_activation = clock.wrap("SiLU x up", ops.gated_activation)
    engine.runner._forward = clock.wrap("forward, the rest (views, splits, loop)", engine.runner._forward)
    engine.runner.execute = clock.wrap("prepare inputs (ids, positions, slots, tables)", engine.runner.execute)
    engine.sampler = TimedSampler(engine.sampler, clock.wrap("sampling", engine.sampler))
    engine.scheduler.schedule = clock.wrap("schedule", engine.scheduler.schedule)
    engine.step = clock.wrap("step, the rest (outputs, bookkeeping)", engine.step)
    return clock


async def stream_gaps(engine: AsyncLLMEngine, args: argparse.Namespace, batch: int, tag: str) -> list[float]:
    """Gaps between consecutive outputs of `batch` concurrent streams, as their asyncio readers see them."""
    async def read(index: int) -> list[float]:
        times = []
        async for _ in engine.stream(f"{tag}-{index}", prompt(args, index), sampling(args)):
            times.append(time.perf_counter())
        decode = times[1 + WARM_UP_STEPS:]
        return [later - earlier for earlier, later in zip(decode, decode[1:])]

    gaps = await asyncio.gather(*(read(index) for index in range(batch)))
    return [gap for stream in gaps for gap in stream]


def milliseconds(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1e3:6.2f} ms, mean {statistics.fmean(values) * 1e3:6.2f} ms"


def main() -> None:
    args = parse_args()
    engine = build_engine(args)
    plain = {batch: decode_steps(engine, args, batch, f"plain{batch}")[0] for batch in args.batch_sizes}
    asynchronous = AsyncLLMEngine(engine=engine)
    asynchronous.start()
    try:
        gaps = {batch: asyncio.run(stream_gaps(asynchronous, args, batch, f"async{batch}"))
                for batch in args.batch_sizes}
    finally:
        asynchronous.shutdown()
    clock = instrument(engine)
    print(f"demo {args.size} model, {args.num_threads} threads, prompts of {args.prompt_tokens} tokens, "
          f"{args.steps} decode steps per batch size")
    for batch in args.batch_sizes:
        timed, counted = decode_steps(engine, args, batch, f"timed{batch}", clock)
        total = sum(timed)
        print(f"\nbatch {batch}: LLMEngine.step() {milliseconds(plain[batch])}; "
              f"AsyncLLMEngine output gaps {milliseconds(gaps[batch])}")
        print(f"  instrumented steps: mean {total / args.steps * 1e3:.2f} ms, by part (mean ms per step):")
        for category, seconds in sorted(counted.items(), key=lambda item: -item[1]):
            print(f"    {category:<48} {seconds / args.steps * 1e3:7.3f}  {100 * seconds / total:5.1f} %")


if __name__ == "__main__":
    main()
