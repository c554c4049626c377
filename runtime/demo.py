"""The embedded demo model: a seeded tiny Llama with random weights and a byte-level BPE tokenizer
trained on Python's own docs, written as a normal Hugging Face checkpoint for offline use.

torch and transformers' model classes are imported only to build it: finding a cached build (all
the transformer needs, for its tokenizer) stays light."""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pydoc_data.topics import topics as PYDOC_TOPICS
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from runtime.cache import CACHE_DIR_ENV, DEFAULT_CACHE_DIR, build_atomically, cache_root

if TYPE_CHECKING:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

logger = logging.getLogger(__name__)

# Bump when the recipe changes, so stale caches are not reused.
FORMAT_VERSION = 1
TOKENIZER_VOCAB_SIZE = 8192
WEIGHTS_SEED = 0

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# LlamaConfig arguments of each size; vocab_size and the special token ids come from the tokenizer.
DEMO_SIZES: dict[str, dict] = {
    "small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=688,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    ),
    "large": dict(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1376,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    ),
}

CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

# Seeding works on torch's global generator, so two builds in one process must take turns.
_seeded_init_lock = threading.Lock()


def demo_model_dir(size: str, cache_dir: str | Path | None = None) -> Path:
    """Where the demo model of `size` lives, whether or not it has been built yet."""
    _check_size(size)
    return cache_root(cache_dir) / f"demo-{size}-v{FORMAT_VERSION}"


def build_demo_model(size: str = "small", cache_dir: str | Path | None = None) -> Path:
    """Return the demo model's checkpoint directory, building it first if it is not complete."""
    target = demo_model_dir(size, cache_dir)
    if _is_complete(target):
        logger.info("Using the cached %s demo model at %s", size, target)
        return target
    logger.warning(
        "Building the %s demo model in %s: its weights are random, so its text is gibberish",
        size,
        target,
    )
    started = time.perf_counter()
    build_atomically(target, lambda staging: _write_checkpoint(size, staging), _is_complete)
    logger.info("Demo model ready at %s (%.1f s)", target, time.perf_counter() - started)
    return target


def _check_size(size: str) -> None:
    if size not in DEMO_SIZES:
        allowed = ", ".join(DEMO_SIZES)
        raise ValueError(f"Unknown demo model size {size!r}; choose one of: {allowed}")


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in CHECKPOINT_FILES)


def _write_checkpoint(size: str, directory: Path) -> None:
    tokenizer = _train_tokenizer()
    config = _model_config(size, tokenizer)
    model = _random_model(config)
    model.generation_config = _generation_config(tokenizer)
    logger.info("Saving %s demo weights (%d parameters, float32)", size, model.num_parameters())
    model.save_pretrained(directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    write_tokenizer_config(directory, config.max_position_embeddings)


def _train_tokenizer() -> Tokenizer:
    logger.info("Training a byte-level BPE tokenizer on %d pydoc topics", len(PYDOC_TOPICS))
    # Sorted keys give the trainer the same corpus in the same order on every build.
    return train_byte_level_bpe((PYDOC_TOPICS[key] for key in sorted(PYDOC_TOPICS)), TOKENIZER_VOCAB_SIZE)


def train_byte_level_bpe(corpus: Iterable[str], vocab_size: int,
                         split_first: pre_tokenizers.PreTokenizer | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `corpus`, with the demo models' special tokens and a
    BOS prepended to every encoded text; `split_first` cuts the text before the byte-level split."""
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = byte_level if split_first is None else pre_tokenizers.Sequence([split_first, byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, tokenizer.token_to_id(BOS_TOKEN))],
    )
    return tokenizer


def _model_config(size: str, tokenizer: Tokenizer) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        **DEMO_SIZES[size],
        vocab_size=tokenizer.get_vocab_size(),
        bos_token_id=tokenizer.token_to_id(BOS_TOKEN),
        eos_token_id=tokenizer.token_to_id(EOS_TOKEN),
        pad_token_id=tokenizer.token_to_id(EOS_TOKEN),
        dtype="float32",
        architectures=["LlamaForCausalLM"],
    )


def _random_model(config: LlamaConfig) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaForCausalLM

    logger.info("Initialising random weights with seed %d", WEIGHTS_SEED)
    with _seeded_init_lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHTS_SEED)
        return LlamaForCausalLM(config)


def _generation_config(tokenizer: Tokenizer) -> GenerationConfig:
    from transformers import GenerationConfig

    # A chat reply ends with <|im_end|>, a plain completion with <|end_of_text|>.
    return GenerationConfig(
        bos_token_id=tokenizer.token_to_id(BOS_TOKEN),
        eos_token_id=[tokenizer.token_to_id(EOS_TOKEN), tokenizer.token_to_id(IM_END_TOKEN)],
        pad_token_id=tokenizer.token_to_id(EOS_TOKEN),
    )


def write_tokenizer_config(directory: Path, model_max_length: int) -> None:
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "additional_special_tokens": [IM_START_TOKEN, IM_END_TOKEN],
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    text = json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n"
    (directory / "tokenizer_config.json").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the demo model and print its directory.")
    parser.add_argument("--size", choices=list(DEMO_SIZES), default="small")
    parser.add_argument(
        "--cache_dir",
        default=None,
        help=f"cache root (default: ${CACHE_DIR_ENV}, else {DEFAULT_CACHE_DIR})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(build_demo_model(args.size, args.cache_dir))


if __name__ == "__main__":
    main()
