"""The synthetic skill suite the two task models learn and the router is measured on: questions in
natural language, several phrasings each, whose short answers can be checked exactly. Four
skills - arithmetic, comparing numbers, sorting and reversing lists, and look-ups in a fact table
- each graded in difficulty levels 1 (easy) to 4 (hard): larger numbers and more of them, longer
lists, or facts about rarer places (the table follows a long tail, as world knowledge does, so a
model's capacity decides how far down it reaches).

Everything is a pure function of a seed. A question is identified by its `key`, its content
without the phrasing (`add:34:58`); where a level has more questions than training could cover,
the held-out splits (router training and the test suite) take the keys whose hash falls in their
own bucket and training takes none of them. Facts and one-digit sums are too few to hold out:
knowing them is the skill, and held-out items ask them in a phrasing drawn afresh."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

LEVELS = (1, 2, 3, 4)


class Split(StrEnum):
    """TRAIN teaches the task models; ROUTER labels the router's training data; TEST is the held-out
    suite every accuracy and routing figure is measured on."""

    TRAIN = "train"
    ROUTER = "router"
    TEST = "test"


# One key in HELD_OUT_BUCKETS belongs to each held-out split; training skips both buckets.
HELD_OUT_BUCKETS = 16
_BUCKET_OF_SPLIT = {Split.TEST: 0, Split.ROUTER: 1}


@dataclass(frozen=True, slots=True)
class Item:
    """One question of the suite and its one right answer."""

    skill: str
    task: str
    level: int
    key: str
    prompt: str
    answer: str

    def as_dict(self) -> dict:
        return {"skill": self.skill, "task": self.task, "level": self.level, "key": self.key,
                "prompt": self.prompt, "answer": self.answer}


@dataclass(frozen=True, slots=True)
class Question:
    key: str
    prompt: str
    answer: str


@dataclass(frozen=True, slots=True)
class Task:
    """One kind of question within a skill. `make(rng, level)` draws a question; `enumerable`
    levels have so few questions that all are taught (none can be held out)."""

    name: str
    skill: str
    make: Callable[[random.Random, int], Question]
    enumerable_levels: frozenset[int] = frozenset()


def _pick(rng: random.Random, phrasings: tuple[str, ...], **values: object) -> str:
    return rng.choice(phrasings).format(**values)


def _joined(values: list) -> str:
    return ", ".join(str(value) for value in values)


# Arithmetic ------------------------------------------------------------------------------------

ADD_PHRASINGS = (
    "What is {a} plus {b}?",
    "What is {a} + {b}?",
    "Add {a} and {b}.",
    "Compute {a} + {b}.",
    "How much is {a} plus {b}?",
    "What do you get if you add {b} to {a}?",
    "Calculate the sum of {a} and {b}.",
)
SUBTRACT_PHRASINGS = (
    "What is {a} minus {b}?",
    "What is {a} - {b}?",
    "Subtract {b} from {a}.",
    "Compute {a} - {b}.",
    "How much is {a} minus {b}?",
    "What do you get if you take {b} away from {a}?",
    "Calculate the difference between {a} and {b}.",
)
ADD_THREE_PHRASINGS = (
    "What is {a} plus {b} plus {c}?",
    "What is {a} + {b} + {c}?",
    "Add {a}, {b} and {c}.",
    "Compute {a} + {b} + {c}.",
    "How much is {a} plus {b} plus {c}?",
    "What do you get if you add {a}, {b} and {c}?",
    "Calculate the sum of {a}, {b} and {c}.",
)
SUBTRACT_TWICE_PHRASINGS = (
    "What is {a} minus {b} minus {c}?",
    "What is {a} - {b} - {c}?",
    "Subtract {b} and then {c} from {a}.",
    "Compute {a} - {b} - {c}.",
    "How much is {a} minus {b} minus {c}?",
    "What do you get if you take {b} and then {c} away from {a}?",
    "Start from {a}, take away {b}, then take away {c}. What is left?",
)
# Every number of the suite is below 100, a token of its own: what is hard is the operation, not
# spelling a long number digit by digit.
MAX_NUMBER = 99
# Level: (smallest, largest) of each operand: one digit, two digits and one, two digits, three terms.
ADDITION_OPERANDS = {1: ((0, 9), (0, 9)), 2: ((10, 89), (1, 9)), 3: ((10, 89), (10, 89)),
                     4: ((10, 59), (10, 59), (10, 59))}


def _operands_summing_below(rng: random.Random, ranges: tuple[tuple[int, int], ...]) -> list[int]:
    """Operands drawn from `ranges` whose sum is at most MAX_NUMBER, in a random order."""
    while True:
        operands = [rng.randint(low, high) for low, high in ranges]
        if sum(operands) <= MAX_NUMBER:
            rng.shuffle(operands)
            return operands


def make_addition(rng: random.Random, level: int) -> Question:
    operands = _operands_summing_below(rng, ADDITION_OPERANDS[level])
    names = dict(zip("abc", operands))
    phrasings = ADD_THREE_PHRASINGS if len(operands) == 3 else ADD_PHRASINGS
    return Question(f"add:{':'.join(map(str, operands))}", _pick(rng, phrasings, **names), str(sum(operands)))


def make_subtraction(rng: random.Random, level: int) -> Question:
    """The same operands as addition's, read backwards: their sum minus the others."""
    operands = _operands_summing_below(rng, ADDITION_OPERANDS[level])
    first = sum(operands)
    taken = operands[1:]
    names = dict(zip("abc", [first, *taken]))
    phrasings = SUBTRACT_TWICE_PHRASINGS if len(taken) == 2 else SUBTRACT_PHRASINGS
    return Question(f"sub:{':'.join(map(str, [first, *taken]))}", _pick(rng, phrasings, **names), str(operands[0]))


# Comparing ---------------------------------------------------------------------------------

LARGEST_PHRASINGS = (
    "Which is the largest number: {items}?",
    "What is the biggest of these numbers: {items}?",
    "Find the maximum of {items}.",
    "Which number is the greatest: {items}?",
    "Of {items}, which is largest?",
)
SMALLEST_PHRASINGS = (
    "Which is the smallest number: {items}?",
    "What is the lowest of these numbers: {items}?",
    "Find the minimum of {items}.",
    "Which number is the least: {items}?",
    "Of {items}, which is smallest?",
)
# Level: how many numbers (each of two digits) the largest or the smallest is picked from.
EXTREME_SIZES = {1: 2, 2: 3, 3: 5, 4: 8}


def make_largest(rng: random.Random, level: int) -> Question:
    numbers = rng.sample(range(10, 100), EXTREME_SIZES[level])
    return Question(f"max:{_joined(numbers)}", _pick(rng, LARGEST_PHRASINGS, items=_joined(numbers)),
                    str(max(numbers)))


def make_smallest(rng: random.Random, level: int) -> Question:
    numbers = rng.sample(range(10, 100), EXTREME_SIZES[level])
    return Question(f"min:{_joined(numbers)}", _pick(rng, SMALLEST_PHRASINGS, items=_joined(numbers)),
                    str(min(numbers)))


# Sorting and reversing -------------------------------------------------------------------------

SORT_PHRASINGS = (
    "Sort these numbers from smallest to largest: {items}.",
    "Put {items} in ascending order.",
    "Arrange in increasing order: {items}.",
    "Order these numbers from low to high: {items}.",
    "Sort in ascending order: {items}.",
)
REVERSE_PHRASINGS = (
    "Reverse this list: {items}.",
    "Write this list backwards: {items}.",
    "What is {items} in reverse order?",
    "List these in reverse: {items}.",
    "Give the reverse of the list {items}.",
)
REVERSE_WORDS = ("apple", "river", "stone", "cloud", "lamp", "horse", "paper", "glass", "tiger", "bread",
                 "chair", "ocean", "piano", "candle", "forest", "violin")
# Level: the number of items.
SORT_SIZES = {1: 2, 2: 3, 3: 4, 4: 6}
REVERSE_SIZES = {1: 2, 2: 4, 3: 6, 4: 8}


def make_sort(rng: random.Random, level: int) -> Question:
    numbers = rng.sample(range(10, 100), SORT_SIZES[level])
    return Question(f"sort:{_joined(numbers)}", _pick(rng, SORT_PHRASINGS, items=_joined(numbers)),
                    _joined(sorted(numbers)))


def make_reverse(rng: random.Random, level: int) -> Question:
    words = [rng.choice(REVERSE_WORDS) for _ in range(REVERSE_SIZES[level])]
    return Question(f"reverse:{_joined(words)}", _pick(rng, REVERSE_PHRASINGS, items=_joined(words)),
                    _joined(words[::-1]))


# The fact table --------------------------------------------------------------------------------

FACT_TABLE_SEED = 1729
# An invented world in four kinds of place, one per level: a few countries that everybody talks
# about, more provinces, more towns again, and a long tail of villages. Training asks about each
# kind equally often, so a village comes up 16 times less often than a country: what a model still
# remembers of the tail is what its capacity and its training bought.
PLACE_KINDS = {1: "country", 2: "province", 3: "town", 4: "village"}
PLACES_OF_KIND = {"country": 12, "province": 36, "town": 96, "village": 192}
LANGUAGES = ("Aldic", "Borish", "Cantrel", "Dovine", "Eskaran", "Fenlish", "Galmic", "Hestran")
CROPS = ("barley", "rye", "olives", "grapes", "apples", "flax", "hops", "beans", "plums", "rice")
# Each kind's two questions: (the attribute, its phrasings); {place} is the place's name.
FACT_QUESTIONS = {
    "country": (
        ("capital", ("What is the capital of the country of {place}?",
                     "Which city is the capital of {place}, the country?",
                     "Name the capital of the country {place}.",
                     "Tell me the capital city of the country of {place}.")),
        ("language", ("What language is spoken in the country of {place}?",
                      "Which language do people speak in the country {place}?",
                      "What is the official language of the country of {place}?",
                      "Name the language of the country {place}.")),
    ),
    "province": (
        ("capital", ("What is the capital of the province of {place}?",
                     "Which city is the seat of the province of {place}?",
                     "Name the capital of the province {place}.",
                     "Tell me the main city of the province of {place}.")),
        ("country", ("Which country is the province of {place} in?",
                     "In what country is the province {place}?",
                     "The province of {place} belongs to which country?",
                     "Name the country of the province {place}.")),
    ),
    "town": (
        ("province", ("Which province is the town of {place} in?",
                      "In what province is the town {place}?",
                      "The town of {place} lies in which province?",
                      "Name the province of the town {place}.")),
        ("river", ("What river flows through the town of {place}?",
                   "Which river runs through the town {place}?",
                   "Name the river of the town of {place}.",
                   "The town of {place} stands on which river?")),
    ),
    "village": (
        ("town", ("Which town is the village of {place} near?",
                  "What is the nearest town to the village {place}?",
                  "The village of {place} is close to which town?",
                  "Name the town next to the village of {place}.")),
        ("crop", ("What does the village of {place} grow?",
                  "Which crop is farmed in the village {place}?",
                  "What is the main crop of the village of {place}?",
                  "Name the crop of the village {place}.")),
    ),
}
_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t",
           "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th", "nd", "m")


@dataclass(frozen=True, slots=True)
class Place:
    kind: str
    name: str
    facts: dict[str, str]


def _invented_name(rng: random.Random) -> str:
    name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(2))
    return (name + rng.choice(_CODAS)).capitalize()


@cache
def fact_table() -> dict[str, tuple[Place, ...]]:
    """The invented places of each kind, each with its two facts; a province lies in one of the
    countries, a town in one of the provinces, a village near one of the towns."""
    rng = random.Random(FACT_TABLE_SEED)
    used: set[str] = set()

    def fresh_name() -> str:
        while (name := _invented_name(rng)) in used:
            pass
        used.add(name)
        return name

    names = {kind: [fresh_name() for _ in range(count)] for kind, count in PLACES_OF_KIND.items()}
    rivers = [fresh_name() for _ in range(24)]
    facts = {
        "country": [{"capital": fresh_name(), "language": rng.choice(LANGUAGES)} for _ in names["country"]],
        "province": [{"capital": fresh_name(), "country": rng.choice(names["country"])} for _ in names["province"]],
        "town": [{"province": rng.choice(names["province"]), "river": rng.choice(rivers)} for _ in names["town"]],
        "village": [{"town": rng.choice(names["town"]), "crop": rng.choice(CROPS)} for _ in names["village"]],
    }
    return {kind: tuple(Place(kind, name, fact) for name, fact in zip(names[kind], facts[kind])) for kind in names}


def make_fact(rng: random.Random, level: int) -> Question:
    kind = PLACE_KINDS[level]
    place = rng.choice(fact_table()[kind])
    attribute, phrasings = rng.choice(FACT_QUESTIONS[kind])
    return Question(f"{attribute}:{kind}:{place.name}", _pick(rng, phrasings, place=place.name), place.facts[attribute])


# The suite -------------------------------------------------------------------------------------

ALL_LEVELS = frozenset(LEVELS)
TASKS: tuple[Task, ...] = (
    Task("addition", "arithmetic", make_addition, frozenset({1})),
    Task("subtraction", "arithmetic", make_subtraction, frozenset({1})),
    Task("largest", "comparing", make_largest),
    Task("smallest", "comparing", make_smallest),
    Task("sort", "sorting and reversing", make_sort),
    Task("reverse", "sorting and reversing", make_reverse),
    Task("place", "fact table", make_fact, ALL_LEVELS),
)
SKILLS = tuple(dict.fromkeys(task.skill for task in TASKS))
_TASKS_OF_SKILL = {skill: tuple(task for task in TASKS if task.skill == skill) for skill in SKILLS}


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % HELD_OUT_BUCKETS


def belongs_to(split: Split, task: Task, level: int, key: str) -> bool:
    """Whether a question of `key` may appear in `split` (see the module's docstring)."""
    if level in task.enumerable_levels:
        return True
    bucket = _bucket(key)
    if split is Split.TRAIN:
        return bucket not in _BUCKET_OF_SPLIT.values()
    return bucket == _BUCKET_OF_SPLIT[split]


def _draw(rng: random.Random, split: Split, task: Task, level: int) -> Item:
    while True:
        question = task.make(rng, level)
        if belongs_to(split, task, level, question.key):
            return Item(task.skill, task.name, level, question.key, question.prompt, question.answer)


def held_out_items(split: Split, count: int, seed: int = 0) -> list[Item]:
    """`count` items of a held-out split, balanced: each skill and each level equally often, the
    tasks of a skill taking turns."""
    if split is Split.TRAIN:
        raise ValueError("held_out_items draws the router or test split; training streams training_items()")
    rng = random.Random(f"{split}:{seed}")
    cells = [(skill, level) for skill in SKILLS for level in LEVELS]
    items = []
    for index in range(count):
        skill, level = cells[index % len(cells)]
        tasks = _TASKS_OF_SKILL[skill]
        items.append(_draw(rng, split, tasks[(index // len(cells)) % len(tasks)], level))
    rng.shuffle(items)
    return items


def training_items(seed: int) -> Iterator[Item]:
    """An endless stream of training items: skills and levels uniform, then the tasks of a skill."""
    rng = random.Random(f"{Split.TRAIN}:{seed}")
    while True:
        yield _draw(rng, Split.TRAIN, rng.choice(_TASKS_OF_SKILL[rng.choice(SKILLS)]), rng.choice(LEVELS))


_SEPARATORS = re.compile(r"\s*,\s*|\s+")


def normalize_answer(text: str) -> str:
    """An answer as it is compared: case, surrounding space, a final full stop and the spacing of
    list separators do not matter."""
    text = text.strip().rstrip(".").strip().lower()
    return ", ".join(part for part in _SEPARATORS.split(text) if part)


def is_correct(item: Item, answer: str) -> bool:
    return normalize_answer(answer) == normalize_answer(item.answer)
