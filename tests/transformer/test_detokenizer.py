"""Incremental detokenization on the demo model's byte-level BPE: the deltas of any token
sequence concatenate to the full decode, and no delta carries a broken character."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from transformer.detokenizer import REPLACEMENT_CHARACTER, IncrementalDetokenizer
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
    assert "".join(deltas) == tokenizer.decode(token_ids)
    # Only the final flush may show a character the output left incomplete.
    assert not any(delta.endswith(REPLACEMENT_CHARACTER) for delta in deltas[:-1])


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
