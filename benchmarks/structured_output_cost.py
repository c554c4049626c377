"""The throughput cost of structured outputs: the same batch of requests decoded unconstrained,
under a realistic JSON schema, and under `json_object`, in one engine and one run, in interleaved
rounds; with the grammar's own time per step (mask fill, what the step still waits for it, mask apply).

The default model is a small random-weight Llama with SmolLM2-135M-Instruct's tokenizer and
49k vocabulary (the grammars need a real tokenizer): its forward costs a few milliseconds at
batch 32, about what a GPU decode step does, so the grammar's share is not hidden behind a slow
CPU forward (there `json_object` rows close at once: `{}` is one token, and a random model picks
it, so only their per-step grammar times mean anything). `--model smollm2-135m-instruct` runs the
real weights instead, whose `json_object` answers run on.

Every request has the same prompt length and max_tokens and ignores EOS. The schema asks for more
records than max_tokens can hold, so its rows also run to max_tokens; a `json_object` row may
close its object sooner, which is why throughput is output tokens per second and the mean output
length is printed beside it. The target (issue 25) is under 10 % lost for JSON schema at batch 32.

Usage: PYTHONPATH=. python benchmarks/structured_output_cost.py [--batch 32] [--output_len 48]
       [--rounds 3] [--model synthetic|smollm2-135m-instruct] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from benchmarks.step_overhead import PhaseClock
from runtime.engine import EngineConfig, LLMEngine, SamplingParams
from runtime.engine import grammar as grammar_module
from runtime.engine import sampler as sampler_module
from runtime.engine.grammar import GrammarMasks
from runtime.engine.structured_output import StructuredOutput
from runtime.real_models import checkpoint_dir

logger = logging.getLogger(__name__)

TOKENIZER_MODEL = "smollm2-135m-instruct"
SYNTHETIC_MODEL = "synthetic"
RECORD = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24},
    "email": {"type": "string", "maxLength": 32},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "role": {"enum": ["admin", "editor", "viewer"]},
    "active": {"type": "boolean"}},
    "required": ["name", "email", "age", "role", "active"], "additionalProperties": False}
PROMPT = "Extract every person mentioned in the following text as JSON records: {text}"
TEXT = "Ada ({n}) runs the team; Grace edits the docs and Linus reviews code. "
MODES = ("unconstrained", "json_schema", "json_object")
# The grammar's phases: (where, attribute wrapped, phase name). The fill runs on its own thread,
# beside the forward pass; "fill wait" is what a step then still waits for it.
GRAMMAR_PHASES = ((grammar_module, "fill_grammar_bitmask", "mask fill"), (GrammarMasks, "wait", "fill wait"),
                  (sampler_module, "apply_grammar_bitmask", "mask apply"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="requests per round, all decoded together")
    parser.add_argument("--output_len", type=int, default=48, help="max_tokens of every request")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every mode; medians reported")
    parser.add_argument("--model", default=SYNTHETIC_MODEL, help=f"{SYNTHETIC_MODEL} or {TOKENIZER_MODEL}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if min(args.batch, args.output_len, args.rounds, args.threads) < 1:
        parser.error("--batch, --output_len, --rounds and --threads must be >= 1")
    return args


def schema_for(output_len: int) -> dict:
    # More records than max_tokens can write: a schema row never finishes before the others.
    return {"type": "object", "properties": {"people": {"type": "array", "items": RECORD, "minItems": output_len}},
            "required": ["people"], "additionalProperties": False}


def build_engine(args: argparse.Namespace, tokenizer_dir: Path, max_model_len: int) -> LLMEngine:
    config = EngineConfig(
        model=str(tokenizer_dir), tokenizer=str(tokenizer_dir), dtype="float32", device="cpu",
        attention_backend="torch", max_num_seqs=args.batch, max_num_batched_tokens=2048,
        max_model_len=max_model_len, num_threads=args.threads,
    )
    if args.model != SYNTHETIC_MODEL:
        return LLMEngine(config)
    torch.manual_seed(0)
    vocab_size = AutoTokenizer.from_pretrained(tokenizer_dir).vocab_size
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_model_len, tie_word_embeddings=True,
    ))
    return LLMEngine(config, model=model)


def make_prompts(tokenizer: PreTrainedTokenizerBase, batch: int) -> list[list[int]]:
    """`batch` chat prompts of one length (the text differs only in a two-digit number)."""
    prompts = []
    for index in range(batch):
        messages = [{"role": "user", "content": PROMPT.format(text=TEXT.format(n=10 + index % 90))}]
        prompts.append(list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                          return_dict=False)))
    return prompts


def params_for(mode: str, output_len: int) -> SamplingParams:
    constraint = {"unconstrained": None, "json_schema": StructuredOutput(json=schema_for(output_len)),
                  "json_object": StructuredOutput(json_object=True)}[mode]
    return SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True, structured_output=constraint)


class StepClock(PhaseClock):
    """Seconds in each wrapped function, and the engine steps, since the last reset."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def count_steps(self, step: Callable) -> Callable:
        def counted():
            self.steps += 1
            return step()

        return counted

    def reset(self) -> None:
        super().reset()
        self.steps = 0


def instrument(engine: LLMEngine, clock: StepClock) -> None:
    for owner, attribute, phase in GRAMMAR_PHASES:
        setattr(owner, attribute, clock.wrap(phase, getattr(owner, attribute)))
    engine.step = clock.count_steps(engine.step)


def run_round(engine: LLMEngine, clock: StepClock, prompts: list[list[int]], params: SamplingParams) -> dict:
    clock.reset()
    started = time.perf_counter()
    outputs = engine.generate(prompts, params)
    seconds = time.perf_counter() - started
    tokens = sum(len(output.output_token_ids) for output in outputs)
    per_step_ms = {phase: clock.seconds[phase] / clock.steps * 1e3 for _, _, phase in GRAMMAR_PHASES}
    return {"tokens_per_second": tokens / seconds, "mean_output_len": tokens / len(outputs), **per_step_ms}


def summarise(rounds: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {mode: {key: statistics.median(each[key] for each in results) for key in results[0]}
               for mode, results in rounds.items()}
    baseline = summary["unconstrained"]["tokens_per_second"]
    for values in summary.values():
        values["throughput_ratio"] = values["tokens_per_second"] / baseline
    return summary


def print_table(summary: dict[str, dict], args: argparse.Namespace) -> None:
    phases = [phase for _, _, phase in GRAMMAR_PHASES]
    print(f"\nbatch {args.batch}, max_tokens {args.output_len}, model {args.model}, {args.threads} thread(s), "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'mode':<14} {'tok/s':>8} {'ratio':>6} {'mean len':>9} " + " ".join(f"{name:>11}" for name in phases))
    for mode, values in summary.items():
        cells = " ".join(f"{values[phase]:>11.2f}" for phase in phases)
        print(f"{mode:<14} {values['tokens_per_second']:>8.1f} {values['throughput_ratio']:>6.3f} "
              f"{values['mean_output_len']:>9.1f} {cells}")
    print("(grammar phases in milliseconds per engine step)")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    tokenizer_dir = checkpoint_dir(TOKENIZER_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompts = make_prompts(tokenizer, args.batch)
    engine = build_engine(args, tokenizer_dir, max_model_len=max(map(len, prompts)) + args.output_len)
    clock = StepClock()
    instrument(engine, clock)
    logger.info("warming up: the tokenizer for grammars, and each mode once (load: %s)", os.getloadavg())
    for mode in MODES:
        engine.generate(prompts[:2], params_for(mode, args.output_len))
    rounds: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for round_index in range(args.rounds):
        for mode in MODES:
            rounds[mode].append(run_round(engine, clock, prompts, params_for(mode, args.output_len)))
            logger.info("round %d/%d %s: %.1f tok/s", round_index + 1, args.rounds, mode,
                        rounds[mode][-1]["tokens_per_second"])
    summary = summarise(rounds)
    print_table(summary, args)
    print(f"load average: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
