"""TextTokenizer calls the Rust tokenizer directly on its hot paths: it must give exactly what the
transformers wrapper gives, on the demo model's byte-level BPE and on a SentencePiece-style
(Metaspace) tokenizer whose tokenizer.json asks for truncation and padding."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from transformer.tokenizer import INLINE_TOKENIZE_CHARS, TextTokenizer, UnencodableTextError

CORPUS = [
    "Once upon a time there was a tokenizer that split words into pieces.",
    "Grüße, 世界! naïve café; ¿qué? 日本語のテキスト 🙂",
    "def main():\n    return [x ** 2 for x in range(10)]",
] * 20
SPECIAL = ["<s>", "</s>", "<unk>"]
TEXTS = [
    "", " ", "hello", "  leading spaces", "trailing  ", "Grüße 🙂 世界", "<s> a literal BOS </s>",
    "tabs\tand\nnewlines\r\n", "x" * 300, "Once upon a time",
]


def _metaspace_dir(directory: Path) -> Path:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                                              show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    # Saved in the file, as some checkpoints have it; a prompt must never be cut or padded.
    tokenizer.enable_truncation(8)
    tokenizer.enable_padding(length=64, pad_token="<unk>")
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    (directory / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    return directory


@pytest.fixture(scope="module", params=["demo", "metaspace"])
def tokenizer_dir(request, demo_dir, tmp_path_factory) -> Path:
    if request.param == "demo":
        return demo_dir
    return _metaspace_dir(tmp_path_factory.mktemp("metaspace"))


@pytest.fixture(scope="module")
def pair(tokenizer_dir) -> tuple[TextTokenizer, PreTrainedTokenizerFast]:
    return TextTokenizer(tokenizer_dir), PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))


def _check_same(ours: TextTokenizer, reference: PreTrainedTokenizerFast, text: str) -> None:
    ids = ours.encode(text)
    assert ids == reference.encode(text, add_special_tokens=True)
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    for token in ids[:4]:
        assert ours.token_text(token) == reference.decode([token], skip_special_tokens=False,
                                                          clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_and_decode_match_the_transformers_wrapper(pair, text):
    _check_same(*pair, text)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_any_text_encodes_and_decodes_as_the_wrapper_does(pair, text):
    _check_same(*pair, text)


def test_a_prompt_is_neither_truncated_nor_padded(pair):
    ours, _ = pair
    text = " ".join(["word"] * 100)
    ids = ours.encode(text)
    assert len(ids) > 64
    assert ours.decode(ids).strip() == text


@pytest.mark.parametrize("words", [10, INLINE_TOKENIZE_CHARS], ids=["inline", "in a worker thread"])
def test_the_async_forms_give_what_the_plain_ones_give(pair, words):
    """Long texts and id lists go to a worker thread (off the event loop); the result is the same."""
    ours, _ = pair
    text = " ".join(["word"] * words)
    ids = asyncio.run(ours.encode_async(text))
    assert ids == ours.encode(text)
    assert asyncio.run(ours.decode_async(ids)) == ours.decode(ids)


def test_a_lone_surrogate_is_refused_with_what_to_send_instead(pair):
    ours, _ = pair
    with pytest.raises(UnencodableTextError, match=r"lone surrogate \(U\+DC00\).*surrogate pair"):
        ours.encode("half a pair: \udc00")
