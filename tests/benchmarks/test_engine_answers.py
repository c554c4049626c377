"""benchmarks/routing/engine_answers.py cuts a completion where a served one with the same stop
strings ends: the text before the stop string, the tokens up to the one that completed it."""

from __future__ import annotations

import pytest

from benchmarks.routing.engine_answers import cut_at_stop, newline_token_ids
from runtime.demo import build_demo_model
from transformer.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(build_demo_model("small"))


def test_the_completion_ends_with_the_token_that_completes_the_stop_string(tokenizer):
    prompt = tokenizer.encode("Q: What is the capital of France?\nA:")
    completion = tokenizer.encode(" Paris\nQ: What is")
    newline = next(index for index, token in enumerate(completion) if "\n" in tokenizer.token_text(token))
    assert cut_at_stop(tokenizer, prompt, completion, ["\n"]) == (" Paris", newline + 1, True)


def test_without_its_stop_string_the_whole_completion_counts(tokenizer):
    completion = tokenizer.encode(" Paris\nQ: What is")
    text, count, stopped = cut_at_stop(tokenizer, [], completion, ["\n\n"])
    assert (text, count, stopped) == (tokenizer.decode(completion), len(completion), False)


def test_the_newline_tokens_are_those_whose_text_holds_one(tokenizer):
    newlines = newline_token_ids(tokenizer)
    assert newlines and all("\n" in tokenizer.token_text(token) for token in newlines)
    assert tokenizer.encode("a\nb")[-2] in newlines
