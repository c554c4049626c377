"""Host time of one engine step in steady decode, by phase, with a forward that costs nothing.

On a GPU a decode step's forward is one CUDA graph replay; the rest of the step (scheduling,
building the inputs, sampling, turning tokens into outputs) is host work while the GPU waits.
This measures that rest on the CPU: the model's forward is replaced by a stub that returns
fixed logits, so each phase's time is the engine's own. Every step decodes one token for each
of `batch` requests whose prompts are `--context_len` tokens long.

Phases: schedule (Scheduler.schedule), prepare (ModelRunner.execute less the forward: token
ids, positions, slots, block tables, their copies), forward (the stub, or in cuda_graphs mode
the replay of a simulated graph), sample (Sampler; on a GPU it only queues the work, and
waiting for the tokens falls in outputs), outputs (the rest of LLMEngine.step). On the CPU the
sampler's argmax is real work that a GPU does while the host waits.

`--async_scheduling on` runs the step loop that queues each step before fetching the previous
one's tokens (the default on CUDA): on a GPU its host work overlaps the device's, so what this
prints for it is the host work per step that a GPU step has to cover, not time the GPU waits.

Usage: PYTHONPATH=. python benchmarks/step_overhead.py [--batch_sizes 1,16,64,256]
       [--modes cuda_graphs,eager] [--penalties] [--profile 64] [--json PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import pstats
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from runtime.engine import EngineConfig, LLMEngine, SamplingParams
from runtime.engine.model_runner import ModelRunner

# The engine runs a real (tiny) model for everything but the forward, which is stubbed.
VOCAB_SIZE = 1024
PHASES = ("schedule", "prepare", "forward", "sample", "outputs")
MODES = ("cuda_graphs", "eager")
WARMUP_STEPS = 5
# Tokens the first requests decode while the last ones are still being prefilled.
PREFILL_HEADROOM = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", default="1,16,64,256")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--async_scheduling", default="off",
                        help="comma-separated step loops: off (synchronous), on (async scheduling)")
    parser.add_argument("--context_len", type=int, default=1024, help="prompt tokens per request")
    parser.add_argument("--steps", type=int, default=50, help="timed decode steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="the repeat with the least total time is reported")
    parser.add_argument("--penalties", action="store_true",
                        help="every request uses the repetition, frequency and presence penalties and a logit bias "
                             "(their host work grows with the tokens each request has seen)")
    parser.add_argument("--profile", type=int, default=None, metavar="BATCH",
                        help="also cProfile the timed steps at this batch size and print the top functions")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    args.modes = args.modes.split(",")
    if set(args.modes) - set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}")
    args.async_scheduling = args.async_scheduling.split(",")
    if set(args.async_scheduling) - {"on", "off"}:
        parser.error("--async_scheduling takes on, off or both")
    if min(args.batch_sizes + [args.context_len, args.steps, args.repeats]) < 1:
        parser.error("batch sizes, --context_len, --steps and --repeats must be >= 1")
    return args


class PhaseClock:
    """Seconds spent in each wrapped function since the last reset."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, phase: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started

        return timed

    def reset(self) -> None:
        self.seconds.clear()


class SimulatedGraphCapture:
    """Stands in for CUDA graph capture on the CPU: a replay reruns the recorded forward on the
    static inputs, timed as the step's forward."""

    def __init__(self, clock: PhaseClock) -> None:
        self.clock = clock

    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        output = run()
        return self.clock.wrap("forward", lambda: output.copy_(run())), output


def install_free_forward(max_rows: int) -> None:
    """Make every engine's forward return zero logits without computing anything."""
    logits = torch.zeros(max_rows, VOCAB_SIZE)

    def free_forward(runner, input_ids, positions, meta, logits_indices):
        return logits[: logits_indices.shape[0]]

    ModelRunner._forward = free_forward


def build_engine(mode: str, async_scheduling: bool, args: argparse.Namespace, clock: PhaseClock) -> LLMEngine:
    max_batch = max(args.batch_sizes)
    max_model_len = args.context_len + PREFILL_HEADROOM + WARMUP_STEPS + args.repeats * args.steps
    block_size = 16
    config = EngineConfig(
        model="stub-forward", dtype="float32", device="cpu", attention_backend="torch", block_size=block_size,
        num_kv_blocks=max_batch * -(-max_model_len // block_size), max_num_seqs=max_batch,
        max_num_batched_tokens=16384, max_model_len=max_model_len, enforce_eager=mode == "eager", num_threads=1,
        async_scheduling=async_scheduling,
    )
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_model_len,
    ))
    LLMEngine._decode_graph_capture = lambda engine: None if engine.config.enforce_eager else SimulatedGraphCapture(clock)
    engine = LLMEngine(config, model=model)
    engine.scheduler.schedule = clock.wrap("schedule", engine.scheduler.schedule)
    engine.runner.execute = clock.wrap("execute", engine.runner.execute)
    engine.runner._forward = clock.wrap("forward", engine.runner._forward)
    engine.sampler = clock.wrap("sample", engine.sampler)
    return engine


def start_decoding(engine: LLMEngine, batch: int, args: argparse.Namespace, rng: random.Random) -> list[str]:
    """Add `batch` requests and step until every one is decoding."""
    penalties = dict(repetition_penalty=1.1, frequency_penalty=0.5, presence_penalty=0.5,
                     logit_bias={token: 1.0 for token in range(3, 13)}) if args.penalties else {}
    params = SamplingParams(max_tokens=engine.max_model_len - args.context_len, temperature=0.0, ignore_eos=True,
                            **penalties)
    request_ids = [f"b{batch}-{index}" for index in range(batch)]
    for request_id in request_ids:
        engine.add_request(request_id, [rng.randrange(3, VOCAB_SIZE) for _ in range(args.context_len)], params)
    decoding: set[str] = set()
    while len(decoding) < batch:
        decoding.update(output.request_id for output in engine.step())
    for _ in range(WARMUP_STEPS):
        engine.step()
    return request_ids


def time_steps(engine: LLMEngine, clock: PhaseClock, num_steps: int) -> dict[str, float]:
    """Seconds per step, by phase, over `num_steps` decode steps."""
    clock.reset()
    started = time.perf_counter()
    for _ in range(num_steps):
        engine.step()
    total = time.perf_counter() - started
    seconds = clock.seconds
    phases = {
        "schedule": seconds["schedule"],
        "prepare": seconds["execute"] - seconds["forward"],
        "forward": seconds["forward"],
        "sample": seconds["sample"],
        "outputs": total - seconds["schedule"] - seconds["execute"] - seconds["sample"],
    }
    return {phase: value / num_steps for phase, value in phases.items()} | {"total": total / num_steps}


def measure(engine: LLMEngine, clock: PhaseClock, mode: str, batch: int, args, rng) -> dict[str, float]:
    request_ids = start_decoding(engine, batch, args, rng)
    profiler = cProfile.Profile() if args.profile == batch else None
    if profiler is not None:
        profiler.enable()
    repeats = [time_steps(engine, clock, args.steps) for _ in range(args.repeats)]
    if profiler is not None:
        profiler.disable()
        print(f"\n== cProfile, {mode}, batch {batch}, {args.repeats * args.steps} steps (tottime)")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    for request_id in request_ids:
        engine.abort(request_id)
    return min(repeats, key=lambda phases: phases["total"])


def print_table(results: list[dict]) -> None:
    columns = PHASES + ("total",)
    print(f"\n{'mode':<18} {'batch':>5} " + " ".join(f"{name:>9}" for name in columns) + f" {'per token':>10}")
    for row in results:
        cells = " ".join(f"{row[name] * 1e6:>9.1f}" for name in columns)
        print(f"{row['mode']:<18} {row['batch']:>5} {cells} {row['total'] * 1e6 / row['batch']:>10.2f}")
    print("(microseconds per step; per token = total / batch)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    install_free_forward(max(args.batch_sizes))
    rng = random.Random(0)
    results = []
    for mode, async_scheduling in itertools.product(args.modes, args.async_scheduling):
        clock = PhaseClock()
        engine = build_engine(mode, async_scheduling == "on", args, clock)
        name = f"{mode}/{'async' if async_scheduling == 'on' else 'sync'}{'/penalties' if args.penalties else ''}"
        for batch in args.batch_sizes:
            results.append({"mode": name, "batch": batch, **measure(engine, clock, name, batch, args, rng)})
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
