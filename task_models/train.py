"""Train the two task models from nothing on the skill suite, deterministically, on the CPU:

    python -m task_models.train                       # both, as committed (half an hour on 2 quiet cores)
    python -m task_models.train --steps 20 --out /tmp/task-models   # a few steps: does it still work?

Each model is a Llama trained on the same stream of questions, the loss on the answer only, through
a mastery-based curriculum (task_models/curriculum.py: a skill's next level enters the stream once
its current one is learnt). The small one has a quarter of the large one's parameters and a sixth
of its training; the long tails of the tables - rare products, villages, farmers - are where that
shows.
The script writes each model as a Hugging Face checkpoint directory (bf16 safetensors, tokenizer,
chat template) and measures it on the held-out test suite through the engine, writing the
accuracy table into the model card."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from task_models.checkpoint import (
    CHECKPOINTS_DIR,
    SIZES,
    answer_text,
    chat_prompt,
    checkpoint_dir,
    model_config,
    stop_token_ids,
    train_tokenizer,
    write_tokenizer,
)
from task_models.curriculum import Curriculum
from task_models.skills import Item, training_items

logger = logging.getLogger("task_models.train")

IGNORED_LABEL = -100
BUCKETED_BATCHES = 16


@dataclass(frozen=True, slots=True)
class Recipe:
    """How one model is trained: AdamW with a linear warm-up and a cosine decay to a tenth."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float = 0.1
    seed: int = 0


RECIPES: dict[str, Recipe] = {
    "small": Recipe(steps=2000, batch_size=64, learning_rate=3e-3, warmup_steps=100, seed=1),
    "large": Recipe(steps=12000, batch_size=64, learning_rate=2.5e-3, warmup_steps=300, seed=2),
}


def encode_item(tokenizer: Tokenizer, item: Item) -> tuple[list[int], list[int]]:
    """The item's token ids and its labels (the prompt's masked: only the answer is learned)."""
    prompt = tokenizer.encode(chat_prompt(item.prompt), add_special_tokens=False).ids
    answer = tokenizer.encode(answer_text(item.answer), add_special_tokens=False).ids
    return prompt + answer, [IGNORED_LABEL] * len(prompt) + answer


def batches(tokenizer: Tokenizer, batch_size: int, seed: int, pad_id: int,
            curriculum: Curriculum) -> Iterator[tuple[list[Item], dict[str, torch.Tensor]]]:
    """Right-padded batches of the training stream, with their items. BUCKETED_BATCHES batches'
    worth of items are drawn at a time (from the levels the curriculum has open then) and batched
    by length, so that little of a batch is padding."""
    stream = training_items(seed, curriculum.levels_open)
    order = random.Random(seed)
    while True:
        drawn = [next(stream) for _ in range(batch_size * BUCKETED_BATCHES)]
        encoded = sorted(((item, encode_item(tokenizer, item)) for item in drawn), key=lambda pair: len(pair[1][0]))
        groups = [encoded[start:start + batch_size] for start in range(0, len(encoded), batch_size)]
        order.shuffle(groups)
        for group in groups:
            yield [item for item, _ in group], _padded([pair for _, pair in group], pad_id)


def exact_matches(logits: torch.Tensor, labels: torch.Tensor) -> list[bool]:
    """Whether each row's answer is predicted token for token (teacher-forced)."""
    predicted = logits[:, :-1].argmax(dim=-1)
    targets = labels[:, 1:]
    answer = targets != IGNORED_LABEL
    return ((predicted == targets) | ~answer).all(dim=1).tolist()


def _padded(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    batch_size = len(encoded)
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((batch_size, length), pad_id)
    labels = torch.full((batch_size, length), IGNORED_LABEL)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def learning_rate_at(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def build_model(config: dict, seed: int) -> LlamaForCausalLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**config, dtype="float32", architectures=["LlamaForCausalLM"]))


def train(model: LlamaForCausalLM, tokenizer: Tokenizer, recipe: Recipe, log_every: int,
          curriculum: Curriculum) -> list[dict]:
    """Runs the recipe through the curriculum; returns the loss curve (one point per `log_every`
    steps)."""
    decay = [p for name, p in model.named_parameters() if p.dim() >= 2 and "embed" not in name]
    no_decay = [p for name, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in name)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate, betas=(0.9, 0.98), eps=1e-8,
    )
    model.train()
    curve = []
    started = time.perf_counter()
    running_loss = 0.0
    stream = batches(tokenizer, recipe.batch_size, recipe.seed, model.config.pad_token_id, curriculum)
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(recipe, step)
        items, batch = next(stream)
        output = model(**batch)
        loss = output.loss
        with torch.no_grad():
            for item, correct in zip(items, exact_matches(output.logits, batch["labels"])):
                curriculum.record(step, item.skill, item.level, correct)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running_loss += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == recipe.steps:
            points = (step % log_every) + 1
            elapsed = time.perf_counter() - started
            curve.append({"step": step + 1, "loss": round(running_loss / points, 4), "seconds": round(elapsed, 1)})
            logger.info("step %d/%d  loss %.4f  lr %.2e  levels %s  %.1f s", step + 1, recipe.steps,
                        running_loss / points, learning_rate_at(recipe, step),
                        ",".join(str(level) for level in curriculum.reached.values()), elapsed)
            running_loss = 0.0
    model.eval()
    return curve


def save_checkpoint(model: LlamaForCausalLM, tokenizer: Tokenizer, directory: Path) -> None:
    """A Hugging Face checkpoint directory in bf16, moved into place whole."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.to(torch.bfloat16)
        model.config.dtype = "bfloat16"
        model.generation_config = GenerationConfig(
            bos_token_id=model.config.bos_token_id, eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=model.config.pad_token_id,
        )
        model.save_pretrained(staging)
        write_tokenizer(tokenizer, staging)
        for path in staging.iterdir():
            path.chmod(0o644)
        staging.chmod(0o755)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train_size(size: str, recipe: Recipe, tokenizer: Tokenizer, out_dir: Path, log_every: int) -> Path:
    config = model_config(size, tokenizer)
    model = build_model(config, recipe.seed)
    parameters = sum(p.numel() for p in model.parameters())
    logger.info("training the %s task model: %d parameters, %s", size, parameters, recipe)
    started = time.perf_counter()
    curriculum = Curriculum()
    curve = train(model, tokenizer, recipe, log_every, curriculum)
    directory = out_dir / size
    save_checkpoint(model, tokenizer, directory)
    record = {"size": size, "parameters": parameters, "recipe": dataclasses.asdict(recipe),
              "train_seconds": round(time.perf_counter() - started, 1), "torch_threads": torch.get_num_threads(),
              "curriculum": curriculum.as_dict(), "loss_curve": curve}
    (directory / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    logger.info("%s task model written to %s (%.0f s)", size, directory, record["train_seconds"])
    return directory


def write_model_card(directory: Path, size: str) -> None:
    """MODEL_CARD.md from the checkpoint's training record and, when measured, its evaluation."""
    from task_models.evaluate import markdown_table

    training = json.loads((directory / "training.json").read_text())
    evaluation_path = directory / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else None
    recipe = training["recipe"]
    lines = [
        f"# llm-{size}: the {size} task model",
        "",
        "A Llama-architecture model trained from nothing by `python -m task_models.train` on the synthetic skill "
        "suite of `task_models/skills.py`: questions in natural language with short answers that are checked "
        "exactly. It exists to measure routing: it and its sibling differ in capability, and the suite says by how "
        "much, skill by skill and level by level. It knows nothing else.",
        "",
        "## Model",
        f"- parameters: {training['parameters']:,}; architecture in config.json, weights in bf16 safetensors",
        "- tokenizer: byte-level BPE trained on the suite's text, runs of digits cut in pairs first (every number "
        "below 100 is one token); the chat template of the project's demo models (`<|im_start|>role ... "
        "<|im_end|>`), shared by both models",
        "",
        "## Training",
        "- data: an endless stream of training questions (skills uniform, levels uniform among those the "
        "curriculum has opened), seeded; the held-out splits' lists are never taught, their tables and facts are "
        "(knowing them is the skill) and are asked in a phrasing drawn afresh",
        f"- steps: {recipe['steps']:,} of {recipe['batch_size']} questions; AdamW, learning rate "
        f"{recipe['learning_rate']:g} (warm-up {recipe['warmup_steps']} steps, cosine to a tenth), weight decay "
        f"{recipe['weight_decay']:g}; loss on the answer only",
        f"- seed {recipe['seed']}, {training['torch_threads']} torch threads, {training['train_seconds']:.0f} s "
        "on the CPU (the same seed and thread count give the same weights on the same machine)",
        f"- final training loss: {training['loss_curve'][-1]['loss']}",
        "- curriculum (task_models/curriculum.py): each skill starts at level 1; the next level entered the "
        "stream at step " + ", ".join(f"{unlock['step']} ({unlock['skill']} {unlock['level']})"
                                      for unlock in training.get("curriculum", {}).get("unlocks", [])),
        "",
    ]
    if evaluation is not None:
        lines += [
            "## Accuracy on the held-out test suite",
            f"{evaluation['items']} items (seed {evaluation['seed']}), greedy, through this project's engine; "
            "`python -m task_models.evaluate` prints it again.",
            "",
            markdown_table(evaluation["accuracy"]),
            "",
        ]
    (directory / "MODEL_CARD.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m task_models.train", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--out", type=Path, default=CHECKPOINTS_DIR, help="writes OUT/small and OUT/large")
    parser.add_argument("--steps", type=int, default=None, help="override every recipe's steps (a quick check)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    parser.add_argument("--log_every", type=int, default=100)
    parser.add_argument("--eval_items", type=int, default=1600, help="held-out test items to measure (0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    tokenizer = train_tokenizer()
    for size in args.sizes:
        recipe = RECIPES[size]
        if args.steps is not None:
            recipe = dataclasses.replace(recipe, steps=args.steps, warmup_steps=min(recipe.warmup_steps, args.steps))
        directory = train_size(size, recipe, tokenizer, args.out, min(args.log_every, recipe.steps))
        if args.eval_items:
            from task_models.evaluate import evaluate_checkpoint

            evaluate_checkpoint(directory, args.eval_items)
        write_model_card(directory, size)
    if args.out.resolve() == CHECKPOINTS_DIR.resolve():
        logger.info("checkpoints in %s", ", ".join(str(checkpoint_dir(size)) for size in args.sizes))


if __name__ == "__main__":
    main()
