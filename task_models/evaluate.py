"""Measure a task model on the held-out test suite through our own engine (greedy, as served):

    python -m task_models.evaluate task_models/checkpoints/small --items 1600

prints the accuracy by skill and level, and with `--model_card` writes that table into the
checkpoint's MODEL_CARD.md."""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from task_models.checkpoint import chat_prompt, stop_token_ids
from task_models.skills import LEVELS, SKILLS, Item, Split, held_out_items, is_correct

logger = logging.getLogger(__name__)

# The longest answer (eight reversed words) is under 40 tokens.
MAX_ANSWER_TOKENS = 48
TEST_SEED = 0


@dataclass(frozen=True, slots=True)
class Graded:
    item: Item
    output: str

    @property
    def correct(self) -> bool:
        return is_correct(self.item, self.output)


def answer_items(model_dir: Path, items: list[Item], num_threads: int | None = None) -> list[Graded]:
    """Each item answered greedily by the checkpoint in `model_dir`, through the engine."""
    from runtime.engine import EngineConfig, LLMEngine, SamplingParams

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", device="cpu", num_threads=num_threads))
    prompts = [tokenizer.encode(chat_prompt(item.prompt), add_special_tokens=False).ids for item in items]
    params = SamplingParams(max_tokens=MAX_ANSWER_TOKENS, temperature=0.0, stop_token_ids=stop_token_ids(tokenizer))
    outputs = engine.generate(prompts, params)
    return [Graded(item, tokenizer.decode(output.output_token_ids, skip_special_tokens=True))
            for item, output in zip(items, outputs)]


def accuracy(graded: list[Graded]) -> float:
    return sum(each.correct for each in graded) / len(graded) if graded else 0.0


def accuracy_table(graded: list[Graded]) -> dict[str, dict[str, float]]:
    """Accuracy by skill (rows) and level (columns), with the totals."""
    cells: dict[tuple[str, str], list[Graded]] = defaultdict(list)
    for each in graded:
        for skill in (each.item.skill, "all"):
            for level in (str(each.item.level), "all"):
                cells[skill, level].append(each)
    return {skill: {level: round(accuracy(cells[skill, level]), 4) for level in [*map(str, LEVELS), "all"]}
            for skill in [*SKILLS, "all"]}


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    levels = [*map(str, LEVELS), "all"]
    lines = ["| skill | " + " | ".join(f"level {level}" if level != "all" else "all" for level in levels) + " |",
             "| --- |" + " --- |" * len(levels)]
    for skill, row in table.items():
        lines.append(f"| {skill} | " + " | ".join(f"{100 * row[level]:.1f} %" for level in levels) + " |")
    return "\n".join(lines)


def evaluate_checkpoint(model_dir: Path, num_items: int, num_threads: int | None = None) -> dict:
    items = held_out_items(Split.TEST, num_items, TEST_SEED)
    graded = answer_items(model_dir, items, num_threads)
    table = accuracy_table(graded)
    logger.info("%s on %d held-out items:\n%s", model_dir, len(items), markdown_table(table))
    result = {"items": len(items), "seed": TEST_SEED, "accuracy": table}
    (model_dir / "evaluation.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m task_models.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--items", type=int, default=1600, help="held-out test items (balanced by skill and level)")
    parser.add_argument("--show_errors", type=int, default=0, help="print this many wrong answers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    items = held_out_items(Split.TEST, args.items, TEST_SEED)
    graded = answer_items(args.model_dir, items)
    print(markdown_table(accuracy_table(graded)))
    for each in [each for each in graded if not each.correct][: args.show_errors]:
        print(f"{each.item.task} L{each.item.level}: {each.item.prompt!r} -> {each.output!r} "
              f"(expected {each.item.answer!r})")


if __name__ == "__main__":
    main()
