"""What the two task models are: their architectures, their shared tokenizer and how a question
is laid out for them (the chat template every served model here uses), and where the committed
checkpoints live."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, pre_tokenizers

from runtime.demo import (
    BOS_TOKEN,
    EOS_TOKEN,
    IM_END_TOKEN,
    IM_START_TOKEN,
    train_byte_level_bpe,
    write_tokenizer_config,
)
from task_models.skills import Item, training_items

CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"
SIZES = ("small", "large")
TOKENIZER_VOCAB_SIZE = 1024
TOKENIZER_CORPUS_ITEMS = 40_000
TOKENIZER_SEED = 7
MAX_POSITION_EMBEDDINGS = 256

# LlamaConfig arguments of each model; vocab_size and the special token ids come from the tokenizer.
ARCHITECTURES: dict[str, dict] = {
    "small": dict(
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=384,
        tie_word_embeddings=True,
    ),
    "large": dict(
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=3,
        intermediate_size=512,
        tie_word_embeddings=False,
    ),
}


def checkpoint_dir(size: str) -> Path:
    """The committed checkpoint of `size` (small or large)."""
    if size not in SIZES:
        raise ValueError(f"unknown task model {size!r}; the sizes are {', '.join(SIZES)}")
    return CHECKPOINTS_DIR / size


def chat_prompt(question: str) -> str:
    """A one-turn chat as the chat template renders it, ready for the assistant's answer."""
    return f"{BOS_TOKEN}{IM_START_TOKEN}user\n{question}{IM_END_TOKEN}\n{IM_START_TOKEN}assistant\n"


def answer_text(answer: str) -> str:
    """The assistant's turn as the model learns to write it: the answer, then the end of the turn."""
    return f"{answer}{IM_END_TOKEN}"


def train_tokenizer() -> Tokenizer:
    """A byte-level BPE over the suite's own text. Runs of digits are cut into pairs from the left
    before BPE sees them, so that every number below 100 is one token and a longer one is spelled
    in pairs the same way wherever it appears."""
    stream = training_items(TOKENIZER_SEED)
    corpus = [_item_text(next(stream)) for _ in range(TOKENIZER_CORPUS_ITEMS)]
    return train_byte_level_bpe(corpus, TOKENIZER_VOCAB_SIZE, pre_tokenizers.Split(Regex(r"\d\d?"), "isolated"))


def _item_text(item: Item) -> str:
    return f"user\n{item.prompt}\nassistant\n{item.answer}"


def model_config(size: str, tokenizer: Tokenizer) -> dict:
    """config.json's content for the model of `size`."""
    return dict(
        **ARCHITECTURES[size],
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        vocab_size=tokenizer.get_vocab_size(),
        bos_token_id=tokenizer.token_to_id(BOS_TOKEN),
        eos_token_id=tokenizer.token_to_id(EOS_TOKEN),
        pad_token_id=tokenizer.token_to_id(EOS_TOKEN),
    )


def stop_token_ids(tokenizer: Tokenizer) -> list[int]:
    """A chat reply ends with <|im_end|>, a plain completion with <|end_of_text|>."""
    return [tokenizer.token_to_id(EOS_TOKEN), tokenizer.token_to_id(IM_END_TOKEN)]


def write_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    tokenizer.save(str(directory / "tokenizer.json"))
    write_tokenizer_config(directory, MAX_POSITION_EMBEDDINGS)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
