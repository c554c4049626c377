"""Incremental detokenization on the demo model's byte-level BPE: the deltas of any token
sequence concatenate to the full decode, no delta carries a character that later tokens change,
and bytes that never form a character are not held back to the end."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from transformer.detokenizer import CONTEXT_TOKENS, REPLACEMENT_CHARACTER, IncrementalDetokenizer
from transformer.tokenizer import TextTokenizer

MULTILINGUAL = "Grüße, 世界! Ünïcödé — 🙂🚀 naïve café; ¿qué? Ω≈ç√∫ 日本語のテキスト 🤖"


@pytest.fixture(scope="module")
def tokenizer(demo_dir) -> TextTokenizer:
    return TextTokenizer(demo_dir)


def stream(tokenizer: TextTokenizer, token_ids: list[int], prompt: list[int] | None = None) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_tail=prompt)
    deltas = [detokenizer.push([token]) for token in token_ids]
    deltas.append(detokenizer.flush())
    return deltas


def test_multibyte_characters_are_never_split(tokenizer):
    token_ids = tokenizer.encode(MULTILINGUAL)[1:]  # without the BOS
    deltas = stream(tokenizer, token_ids)
    assert "".join(deltas) == MULTILINGUAL
    assert not any(REPLACEMENT_CHARACTER in delta for delta in deltas)
    # The byte-level tokenizer really does split characters across tokens here.
    assert any(REPLACEMENT_CHARACTER in tokenizer.decode([token]) for token in token_ids)


def test_the_first_token_keeps_its_leading_space_after_a_prompt(tokenizer):
    prompt = tokenizer.encode("Once upon")
    output = tokenizer.encode(" a time there was")[1:]
    assert "".join(stream(tokenizer, output, prompt)) == " a time there was"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 8191), max_size=30), st.lists(st.integers(0, 8191), max_size=8))
def test_deltas_of_any_token_sequence_concatenate_to_the_full_decode(tokenizer, token_ids, prompt):
    # A prompt cut inside a character is the next test's case.
    assume(not tokenizer.decode(prompt).endswith(REPLACEMENT_CHARACTER))
    deltas = stream(tokenizer, token_ids, prompt)
    full = tokenizer.decode(token_ids)
    assert "".join(deltas) == full
    # Nothing emitted is changed later: what has been streamed at each step is what the whole
    # text of the tokens so far begins with, once those tokens are complete.
    streamed = ""
    for delta in deltas:
        streamed += delta
        assert full.startswith(streamed)


def test_invalid_bytes_are_streamed_as_they_come_not_held_to_the_end(tokenizer):
    """A model can emit bytes that no later token completes (a random-weight one, many in a
    row): each becomes U+FFFD in the text, and goes out a few tokens later at most."""
    invalid = next(token for token in range(tokenizer.vocab_size)
                   if tokenizer.decode([token] * 4) == REPLACEMENT_CHARACTER * 4)
    deltas = stream(tokenizer, [invalid] * 40)
    assert "".join(deltas) == REPLACEMENT_CHARACTER * 40
    assert all(deltas[step] for step in range(3, 40))  # held back 3 at most


def test_a_character_begun_in_the_prompt_and_ended_by_the_output_is_neither_texts(tokenizer):
    """The prompt's half of the character is the prompt's: the output shows neither half rather
    than a replacement character, streamed or whole alike."""
    first_half, second_half = tokenizer.encode("\u00e9")[1:]
    assert stream(tokenizer, [second_half], prompt=[first_half]) == ["", ""]
    assert stream(tokenizer, [second_half, *tokenizer.encode(" ok")[1:]], prompt=[first_half])[-1] == ""
    assert "".join(stream(tokenizer, [second_half, *tokenizer.encode(" ok")[1:]], prompt=[first_half])) == " ok"


def test_pushing_several_tokens_at_once_gives_the_same_text(tokenizer):
    token_ids = tokenizer.encode(MULTILINGUAL)[1:]
    detokenizer = IncrementalDetokenizer(tokenizer)
    text = "".join(detokenizer.push(token_ids[start:start + 3]) for start in range(0, len(token_ids), 3))
    assert text + detokenizer.flush() == MULTILINGUAL


class ByteFallbackSentencePiece:
    """A Llama-2-style tokenizer (Metaspace, byte fallback, a leading space stripped), trained
    here on a small corpus: its decoder shows no character, rather than U+FFFD, for bytes that
    are not (yet) valid UTF-8, and drops the first token's space."""

    def __init__(self) -> None:
        corpus = ["Grüße 🙂 世界 hello world", "Once upon a time there was a café", "日本語のテキスト naïve"] * 10
        self._tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        self._tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        self._tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
        self._tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<unk>", *byte_tokens], show_progress=False))
        self.vocab_size = self._tokenizer.get_vocab_size()

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)


@pytest.fixture(scope="module")
def sentencepiece() -> ByteFallbackSentencePiece:
    return ByteFallbackSentencePiece()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_byte_fallback_deltas_are_the_text_after_the_prompt(sentencepiece, data):
    vocabulary = st.integers(0, sentencepiece.vocab_size - 1)
    prompt = data.draw(st.lists(vocabulary, max_size=6))
    token_ids = data.draw(st.lists(vocabulary, max_size=25))
    # The detokenizer reads the prompt's last CONTEXT_TOKENS as context.
    context = sentencepiece.decode(prompt[-CONTEXT_TOKENS:])
    whole = sentencepiece.decode(prompt[-CONTEXT_TOKENS:] + token_ids)
    assume(whole.startswith(context) and not context.endswith(REPLACEMENT_CHARACTER))
    detokenizer = IncrementalDetokenizer(sentencepiece, prompt_tail=prompt)
    deltas = [detokenizer.push([token]) for token in token_ids] + [detokenizer.flush()]
    # What the output adds after the prompt, its first space included.
    assert "".join(deltas) == whole[len(context):]
