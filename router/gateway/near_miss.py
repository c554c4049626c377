"""The semantic cache's near-miss guard. all-MiniLM-L6-v2 scores "What is 12 + 30?" against
"What is 12 + 31?" at 0.90 and "Convert Celsius to Fahrenheit" against "Convert Fahrenheit to
Celsius" at 0.998: a sentence embedding hears the topic, not the details that change the answer.
So a cached answer is served only when both prompts also agree on those details, found from
benchmarks/data/semantic_cache_pairs.jsonl: numbers, arithmetic operators, negations, quoted
strings, words of opposite meaning (ascending/descending, encrypt/decrypt, safe/unsafe, ...), and
which of two things is the target ("to", "into", "in"): the embedding barely hears word order, so
"50 kilograms in pounds" and "50 pounds in kilograms" score 0.994."""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBER_WORDS = {word: str(value) for value, word in enumerate([
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"])}
OPERATOR_WORDS = {"plus": "+", "minus": "-", "times": "*", "multiplied": "*", "divided": "/", "percent": "%",
                  "power": "^", "squared": "^2", "cubed": "^3"}
NEGATIONS = {"not", "no", "never", "without", "none", "nor", "neither", "nothing", "nobody", "cannot"}
# Each word stands for its side of an opposition: prompts that differ only here want different answers.
OPPOSITES = {
    "ascending": "ascending", "increasing": "ascending", "descending": "descending", "decreasing": "descending",
    "largest": "most", "biggest": "most", "maximum": "most", "max": "most", "highest": "most", "longest": "most",
    "smallest": "least", "minimum": "least", "min": "least", "lowest": "least", "shortest": "least",
    "first": "first", "last": "last", "before": "before", "after": "after", "above": "above", "below": "below",
    "true": "true", "false": "false", "even": "even", "odd": "odd", "start": "start", "stop": "stop",
    "encrypt": "encrypt", "decrypt": "decrypt", "encode": "encode", "decode": "decode",
    "install": "install", "uninstall": "uninstall", "push": "push", "pull": "pull",
    "upper": "upper", "uppercase": "upper", "lower": "lower", "lowercase": "lower",
    "import": "import", "export": "export", "enable": "enable", "disable": "disable",
    "open": "open", "close": "close", "buy": "buy", "sell": "sell", "win": "win", "lose": "lose",
    "synonym": "synonym", "synonyms": "synonym", "antonym": "antonym", "antonyms": "antonym",
}
# A word in one prompt that is another's with one of these in front says the opposite (safe, unsafe).
NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non")
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")
QUOTED = re.compile(r"\"([^\"]+)\"|`([^`]+)`|(?<!\w)'([^'\n]+)'(?!\w)")
ARITHMETIC = re.compile(r"(?<=\d)\s*([-+*/×÷^x%])(?=\s*\d|\W|$)")
TARGET = re.compile(r"\b(?:to|into|in)\s+(?:(?:a|an|the)\s+)?([a-z#+]+)")
PLURAL = re.compile(r"(?<=[a-z]{3})s$")


@dataclass(frozen=True, slots=True)
class ExactTokens:
    """What the guard reads of a prompt: the details another must share to share its answer."""

    numbers: tuple[str, ...]
    operators: tuple[str, ...]
    negations: int
    quoted: frozenset[str]
    opposites: tuple[str, ...]
    targets: frozenset[str]
    # In order, plurals made singular: "liters" and "liter" name the same thing.
    stems: tuple[str, ...]


def exact_tokens(text: str) -> ExactTokens:
    words = WORD.findall(text.lower())
    return ExactTokens(
        numbers=tuple(NUMBER_WORDS.get(word, word).replace(",", "") for word in words
                      if word[0].isdigit() or word in NUMBER_WORDS),
        operators=tuple(_operators(text.lower(), words)),
        negations=sum(1 for word in words if word in NEGATIONS or word.endswith("n't")),
        quoted=frozenset(next(group for group in match.groups() if group).strip() for match in QUOTED.finditer(text)),
        opposites=tuple(OPPOSITES[word] for word in words if word in OPPOSITES),
        targets=frozenset(_stem(word) for word in TARGET.findall(text.lower())),
        stems=tuple(_stem(word) for word in words),
    )


def same_exact_tokens(first: str, second: str) -> bool:
    """Whether two prompts agree on every detail the guard reads."""
    a, b = exact_tokens(first), exact_tokens(second)
    return (a.numbers == b.numbers and sorted(a.operators) == sorted(b.operators) and a.negations == b.negations
            and a.quoted == b.quoted and a.opposites == b.opposites and not _swapped_roles(a, b)
            and not _negated_by_prefix(a.stems, b.stems) and not _negated_by_prefix(b.stems, a.stems))


def _swapped_roles(a: ExactTokens, b: ExactTokens) -> bool:
    """Whether both prompts name the same two things, each taking the other as its target:
    "Celsius to Fahrenheit" against "Fahrenheit to Celsius". Only a swap counts: "reverse a list in
    Python" and "the way to reverse a Python list" have other targets, in the same order; "sort it
    in ascending order in Python" and "in Python, sort it in ascending order" the same ones."""
    return any(target_a not in b.targets and target_b not in a.targets and target_b in a.stems and target_a in b.stems
               and a.stems.index(target_b) < a.stems.index(target_a)
               and b.stems.index(target_a) < b.stems.index(target_b)
               for target_a in a.targets for target_b in b.targets)


def _negated_by_prefix(stems: tuple[str, ...], other: tuple[str, ...]) -> bool:
    other_words = set(other)
    return any(prefix + word in other_words for word in set(stems) - other_words for prefix in NEGATING_PREFIXES)


def _stem(word: str) -> str:
    return PLURAL.sub("", word)


def _operators(lowered: str, words: list[str]) -> list[str]:
    symbols = [{"x": "*", "×": "*", "÷": "/"}.get(symbol, symbol) for symbol in ARITHMETIC.findall(lowered)]
    return symbols + [OPERATOR_WORDS[word] for word in words if word in OPERATOR_WORDS]
