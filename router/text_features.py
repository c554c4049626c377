"""What the learned router reads in a request: hashed words and word pairs of its text (numbers
reduced to their length), a few measures of its structure (how many numbers and how long, how
long a list), each word crossed with those sizes (so that "sort" with six items can weigh other
than "sort" with two), and the rule policy's own activations.

Every step is linear in the text's length with a small constant, and bounded: only the first and
last SCANNED_CHARS_EACH_END characters are read, as the rule features read them (a prompt's
instruction is at its start or its end; its length is measured apart, from the whole). The word
pattern cannot backtrack: each alternative is one character class repeated. Hashing is CRC-32,
the same in every process (Python's own hash() is salted per process)."""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from router.features import RoutingRequest, scanned_text

FEATURIZER_VERSION = 1
# Hashed features of a model fitted without saying otherwise (router.train --buckets).
DEFAULT_NUM_BUCKETS = 2**16
# Words (letters), runs of digits, or one other non-space character.
_TOKEN = re.compile(r"[^\W\d_]+|\d+|[^\w\s]")
# Numbers longer than this all read alike.
MAX_NUMBER_DIGITS = 9
# Sizes are one-hot in buckets up to these caps.
MAX_LIST_ITEMS = 16
MAX_NUMBERS = 16
LIST_SEPARATORS = frozenset({",", ";"})
# A list item is at most this many words ("new york, paris, ..."); a longer gap ends the list.
MAX_ITEM_WORDS = 4

DENSE_FEATURES = (
    "rule:prompt_tokens", "rule:code", "rule:math", "rule:multi_step", "rule:max_tokens", "rule:conversation_depth",
    "log_characters", "log_words", "distinct_word_share", "log_numbers", "longest_number_digits", "log_list_items",
)


@dataclass(frozen=True, slots=True)
class TextFeatures:
    """A request as the learned router's input: hashed sparse counts and the dense measures."""

    sparse: dict[int, float]
    dense: np.ndarray


def words_of(text: str) -> list[str]:
    """Lower-cased words, punctuation, and numbers as '0' repeated to their length."""
    return [_normalized(token) for token in _TOKEN.findall(scanned_text(text).lower())]


def _normalized(token: str) -> str:
    if token[0].isdigit():
        return "0" * min(len(token), MAX_NUMBER_DIGITS)
    return token


@dataclass(frozen=True, slots=True)
class Structure:
    numbers: int
    longest_number: int
    list_items: int


def structure_of(words: list[str]) -> Structure:
    numbers = [len(word) for word in words if word[0] == "0"]
    return Structure(len(numbers), max(numbers, default=0), longest_list(words))


def longest_list(words: list[str]) -> int:
    """Items in the longest run of short items separated by commas or semicolons (0: no list)."""
    longest = separators = 0
    words_since: int | None = None  # since the last separator; None before the first
    for word in words:
        if word in LIST_SEPARATORS:
            chained = words_since is not None and 0 < words_since <= MAX_ITEM_WORDS
            separators = separators + 1 if chained else 1
            longest = max(longest, separators + 1)
            words_since = 0
        elif words_since is not None:
            words_since += 1
    return longest


def bucket_of(feature: str, num_buckets: int) -> int:
    return zlib.crc32(feature.encode()) % num_buckets


def sparse_features(words: list[str], structure: Structure, num_buckets: int) -> dict[int, float]:
    sizes = [f"#items={min(structure.list_items, MAX_LIST_ITEMS)}",
             f"#digits={structure.longest_number}",
             f"#numbers={min(structure.numbers, MAX_NUMBERS)}"]
    counts: Counter[str] = Counter(sizes)
    counts.update(words)
    counts.update(f"{first} {second}" for first, second in zip(words, words[1:]))
    vocabulary = {word for word in words if word.isalpha()}
    counts.update(f"{word}&{size}" for word in vocabulary for size in sizes)
    hashed: dict[int, float] = {}
    for feature, count in counts.items():
        bucket = bucket_of(feature, num_buckets)
        hashed[bucket] = hashed.get(bucket, 0.0) + count
    return hashed


def dense_features(request: RoutingRequest, rule_activations: list[float], words: list[str],
                   structure: Structure) -> np.ndarray:
    distinct_share = len(set(words)) / len(words) if words else 0.0
    values = [*rule_activations, math.log1p(len(request.text)), math.log1p(len(words)), distinct_share,
              math.log1p(structure.numbers), float(structure.longest_number), math.log1p(structure.list_items)]
    return np.asarray(values, dtype=np.float32)


def featurize(request: RoutingRequest, rule_activations: list[float], num_buckets: int) -> TextFeatures:
    """The request's features; `rule_activations` are the rule policy's, in FEATURE_NAMES order."""
    words = words_of(request.text)
    structure = structure_of(words)
    return TextFeatures(sparse_features(words, structure, num_buckets),
                        dense_features(request, rule_activations, words, structure))
