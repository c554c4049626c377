"""Gemma 3 on the CPU: our own forward pass (runtime/engine/models/gemma3.py) against
transformers' modules on our paged attention, in one engine on one checkpoint.

Measured, each as whole engine steps (schedule, forward, sample): a decode step at each of
`--batch_sizes` (every request decoding, contexts of about `--context_len` tokens), and the
prefill step of one `--prefill_len`-token prompt. The two paths alternate `--rounds` times,
since a shared machine's speed drifts; each round's figure is the median of its steps, and the
report gives the medians over rounds and the median of the rounds' ratios (transformers / own:
above 1, own faster).
The LM head, which both paths share, is timed alone at each batch size (and at 1 row, what a
prefill step computes), to show what share of a step it is.

Usage: PYTHONPATH=. python benchmarks/gemma3_forward.py --model_dir DIR [--rounds 5]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import statistics
import time
from collections.abc import Callable

import torch

from runtime.engine import EngineConfig, LLMEngine, SamplingParams
from runtime.engine.models.gemma3 import Gemma3Forward

PATHS = ("transformers", "own")
PREFILL_IDS = itertools.count()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a Gemma 3 (gemma3_text) checkpoint directory")
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--context_len", type=int, default=256, help="prompt tokens of each decoding request")
    parser.add_argument("--prefill_len", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10, help="timed decode steps per path and round")
    parser.add_argument("--prefills", type=int, default=2, help="timed prefill steps per path and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    return args


def prompt(length: int, vocab_size: int) -> list[int]:
    # Ids below 10 are special tokens (pad, eos, bos, ...): keep clear of them.
    return [random.randrange(10, vocab_size) for _ in range(length)]


def timed_steps(engine: LLMEngine, count: int) -> float:
    """Median seconds of `count` engine steps."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def start_decoding(engine: LLMEngine, batch: int, context_len: int) -> None:
    """`batch` requests that decode until aborted, stepped past their prefills."""
    params = SamplingParams(max_tokens=engine.max_model_len - context_len, temperature=0.0, ignore_eos=True)
    prefilling = {f"decode-{batch}-{index}" for index in range(batch)}
    for request_id in prefilling:
        engine.add_request(request_id, prompt(context_len, engine.vocab_size), params)
    while prefilling:
        prefilling -= {output.request_id for output in engine.step()}


def prefill_step(engine: LLMEngine, length: int, count: int) -> float:
    """Median seconds of the step that prefills a fresh `length`-token prompt (and samples its token)."""
    times = []
    for _ in range(count):
        engine.add_request(f"prefill-{next(PREFILL_IDS)}", prompt(length, engine.vocab_size),
                           SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
        times.append(timed_steps(engine, 1))
    return statistics.median(times)


def lm_head_seconds(lm_head: torch.nn.Module, rows: int, repeats: int = 20) -> float:
    hidden = torch.randn(rows, lm_head.in_features)
    with torch.inference_mode():
        lm_head(hidden)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            lm_head(hidden)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def alternate(use_path: Callable[[str], None], measure: Callable[[], float], rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {path: [] for path in PATHS}
    for round_index in range(rounds):
        # Alternate which path goes first, so neither always follows the other.
        for path in PATHS if round_index % 2 == 0 else reversed(PATHS):
            use_path(path)
            results[path].append(measure())
    return results


def report(name: str, results: dict[str, list[float]], lm_head: float) -> None:
    """Medians over rounds, and the median of the rounds' ratios (a burst of load on the machine
    slows both paths of a round alike, so it moves their ratio less than either time)."""
    theirs, ours = (statistics.median(results[path]) * 1e3 for path in PATHS)
    ratio = statistics.median(slow / fast for slow, fast in zip(*(results[path] for path in PATHS)))
    print(f"{name:<15} transformers {theirs:7.1f} ms  own {ours:7.1f} ms  ratio {ratio:4.2f}  "
          f"LM head alone {lm_head * 1e3:5.1f} ms ({lm_head * 1e3 / theirs:3.0%} of transformers' step)", flush=True)
    for path in PATHS:
        print(f"{'':<15} {path} per round: " + " ".join(f"{value * 1e3:.1f}" for value in results[path]))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    random.seed(0)
    engine = LLMEngine(EngineConfig(
        model=args.model_dir, dtype="float32", device="cpu", enable_prefix_caching=False,
        max_num_batched_tokens=max(args.prefill_len, max(args.batch_sizes) * args.context_len),
        max_model_len=max(args.prefill_len, args.context_len + 2 * args.rounds * args.steps) + 1,
    ))
    model = engine.runner.model
    if not Gemma3Forward.supports(model):
        raise SystemExit(f"{args.model_dir} is not a Gemma 3 text model that our forward covers")
    own = Gemma3Forward.from_transformers(model)
    print(f"threads {torch.get_num_threads()}, attention {engine.runner.attention_backend.name}", flush=True)

    def use_path(path: str) -> None:
        engine.runner.fast_forward = own if path == "own" else None

    lm_head = model.get_output_embeddings()
    for batch in args.batch_sizes:
        start_decoding(engine, batch, args.context_len)
        results = alternate(use_path, lambda: timed_steps(engine, args.steps), args.rounds)
        report(f"decode batch {batch}", results, lm_head_seconds(lm_head, batch))
        engine.abort_all()
    results = alternate(use_path, lambda: prefill_step(engine, args.prefill_len, args.prefills), args.rounds)
    report(f"prefill {args.prefill_len}", results, lm_head_seconds(lm_head, 1))


if __name__ == "__main__":
    main()
