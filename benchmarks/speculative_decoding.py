"""Speculative decoding on the CPU: the small task model drafting for the large one.

For each batch size, the same held-out questions, those with the longest answers (greedy, stop
tokens and answer length as served), run through two engines on the large model in one process, interleaved round by round:
one decoding normally, one with the small model as its draft (speculation forced on at every
batch size, so the batch size where it stops paying can be read off). Prints the acceptance rate
(accepted / proposed draft tokens), the mean tokens per speculative step, and the speedup: normal
wall time over speculative wall time for the same requests, the median of the rounds' ratios.
Checks that both engines' outputs are equal (greedy), and names the smallest batch size whose
median speedup is below 1: the measured speculative_disable_by_batch_size.

Usage: python benchmarks/speculative_decoding.py [--batch_sizes 1 4 16] [--num_speculative_tokens 3]
       [--rounds 5] [--num_threads 1] [--max_tokens N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tokenizers import Tokenizer  # noqa: E402

from runtime.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from runtime.engine.config import DEFAULT_SPECULATIVE_DISABLE_BY_BATCH_SIZE  # noqa: E402
from task_models.checkpoint import chat_prompt, stop_token_ids  # noqa: E402
from task_models.evaluate import MAX_ANSWER_TOKENS  # noqa: E402
from task_models.skills import Split, held_out_items  # noqa: E402

logger = logging.getLogger("speculative_decoding")

CHECKPOINTS = REPO_ROOT / "task_models" / "checkpoints"
# Questions from the router split (not the test split the models are graded on).
PROMPT_SEED = 7
CANDIDATES = 400


@dataclass(slots=True)
class BatchResult:
    batch_size: int
    rounds: int
    normal_seconds: float
    speculative_seconds: float
    speedup: float
    speedup_min: float
    speedup_max: float
    acceptance_rate: float
    tokens_per_speculative_step: float
    output_tokens: int
    outputs_equal: bool


def build_engines(num_speculative_tokens: int, num_threads: int) -> tuple[LLMEngine, LLMEngine]:
    common = dict(model=str(CHECKPOINTS / "large"), dtype="float32", device="cpu", num_threads=num_threads)
    normal = LLMEngine(EngineConfig(**common))
    speculative = LLMEngine(EngineConfig(
        **common, speculative_model=str(CHECKPOINTS / "small"), num_speculative_tokens=num_speculative_tokens,
        # Never off here: the benchmark measures where it stops paying.
        speculative_disable_by_batch_size=1_000_000,
    ))
    return normal, speculative


def prompts_and_params(count: int, max_tokens: int | None) -> tuple[list[list[int]], SamplingParams]:
    """The `count` questions with the longest answers among CANDIDATES held-out ones (most are
    answered in 2 to 4 tokens, the first of which comes from the prefill, not from a draft)."""
    tokenizer = Tokenizer.from_file(str(CHECKPOINTS / "large" / "tokenizer.json"))
    candidates = held_out_items(Split.ROUTER, max(CANDIDATES, count), PROMPT_SEED)
    items = sorted(candidates, key=lambda item: len(tokenizer.encode(item.answer).ids), reverse=True)[:count]
    prompts = [tokenizer.encode(chat_prompt(item.prompt), add_special_tokens=False).ids for item in items]
    if max_tokens is not None:
        # Past the answer: both models go on writing the chat's next turns.
        return prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    params = SamplingParams(max_tokens=MAX_ANSWER_TOKENS, temperature=0.0, stop_token_ids=stop_token_ids(tokenizer))
    return prompts, params


def timed_generate(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    outputs = engine.generate(prompts, params)
    return time.perf_counter() - started, [output.output_token_ids for output in outputs]


def measure_batch(
    normal: LLMEngine, speculative: LLMEngine, prompts: list[list[int]], params: SamplingParams, rounds: int
) -> BatchResult:
    before = speculative.stats()
    ratios, normal_times, speculative_times = [], [], []
    outputs_equal = True
    output_tokens = 0
    for round_index in range(rounds):
        # Alternate which engine goes first, so a drift in the machine's load hits both alike.
        order = (normal, speculative) if round_index % 2 == 0 else (speculative, normal)
        results = {id(engine): timed_generate(engine, prompts, params) for engine in order}
        normal_seconds, normal_outputs = results[id(normal)]
        speculative_seconds, speculative_outputs = results[id(speculative)]
        outputs_equal &= normal_outputs == speculative_outputs
        output_tokens = sum(map(len, normal_outputs))
        normal_times.append(normal_seconds)
        speculative_times.append(speculative_seconds)
        ratios.append(normal_seconds / speculative_seconds)
    after = speculative.stats()
    proposed = after.spec_decode_num_draft_tokens - before.spec_decode_num_draft_tokens
    accepted = after.spec_decode_num_accepted_tokens - before.spec_decode_num_accepted_tokens
    drafts = after.spec_decode_num_drafts - before.spec_decode_num_drafts
    return BatchResult(
        batch_size=len(prompts),
        rounds=rounds,
        normal_seconds=statistics.median(normal_times),
        speculative_seconds=statistics.median(speculative_times),
        speedup=statistics.median(ratios),
        speedup_min=min(ratios),
        speedup_max=max(ratios),
        acceptance_rate=accepted / proposed if proposed else 0.0,
        tokens_per_speculative_step=(accepted + drafts) / drafts if drafts else 0.0,
        output_tokens=output_tokens,
        outputs_equal=outputs_equal,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--num_speculative_tokens", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--max_tokens", type=int, default=None,
                        help="generate this many tokens, past the answer and its stop tokens (unset: the answer only)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("runtime", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    normal, speculative = build_engines(args.num_speculative_tokens, args.num_threads)
    prompts, params = prompts_and_params(max(args.batch_sizes), args.max_tokens)
    timed_generate(normal, prompts[:2], params)
    timed_generate(speculative, prompts[:2], params)
    results = []
    print(f"k={args.num_speculative_tokens} threads={args.num_threads} rounds={args.rounds} "
          f"max_tokens={args.max_tokens or 'answer'}")
    print("| batch | normal s | speculative s | speedup (median, min-max) | acceptance | tokens/step | equal |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch_size in args.batch_sizes:
        logger.info("batch %d: %d rounds", batch_size, args.rounds)
        result = measure_batch(normal, speculative, prompts[:batch_size], params, args.rounds)
        results.append(result)
        print(f"| {batch_size} | {result.normal_seconds:.3f} | {result.speculative_seconds:.3f} | "
              f"{result.speedup:.2f}x ({result.speedup_min:.2f}-{result.speedup_max:.2f}) | "
              f"{result.acceptance_rate:.1%} | {result.tokens_per_speculative_step:.2f} | {result.outputs_equal} |",
              flush=True)
    losing = [result.batch_size for result in results if result.speedup < 1.0]
    threshold = min(losing) if losing else None
    print(f"speculative_disable_by_batch_size: {threshold or 'none measured'} (the smallest batch measured whose "
          f"median speedup is below 1; the default is {DEFAULT_SPECULATIVE_DISABLE_BY_BATCH_SIZE})")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=2))


if __name__ == "__main__":
    main()
