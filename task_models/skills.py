"""The synthetic skill suite the two task models learn and the router is measured on: questions in
natural language, several phrasings each, whose short answers can be checked exactly. Four
skills, each graded in difficulty levels 1 (easy) to 4 (hard):

- arithmetic: one-digit sums, the times table, teens times a digit, and two-digit products up
  to 30 x 30 - tables of 64 to 400 facts, learnt by heart as people learn theirs;
- reversing lists of 2 to 5 words;
- places of an invented world: a few countries everybody talks about, more provinces, many
  towns, a long tail of villages;
- people of that world: queens, generals, mayors and farmers, as many and as rare.

Levels 1 and 2 are small tables asked about often; levels 3 and 4 are long tails, asked about
rarely each: what a model still holds of them is what its capacity and its training bought, the
way a small language model knows the famous and not the obscure.

Everything is a pure function of a seed. A question is identified by its `key`, its content
without the phrasing (`*:23:22`). Where a level has more questions than training could cover (the
lists), the held-out splits (router training and the test suite) take the keys whose hash falls
in their own bucket and training takes none of them. The tables and the facts cannot be held out:
knowing them is the skill, and the held-out splits ask them in a phrasing drawn afresh."""

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

# Level: the operation and its operands - one-digit sums, one-digit differences, the times table,
# and teens times one digit. Each is a table of 55 to 100 facts that is learnt by heart, as people
# learn theirs: numbers below 100 are tokens of their own, and what a model can do is how much of
# each table it holds.
ARITHMETIC_PHRASINGS = {
    "+": ("What is {a} plus {b}?", "What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} + {b}.",
          "How much is {a} plus {b}?", "Calculate the sum of {a} and {b}."),
    "-": ("What is {a} minus {b}?", "What is {a} - {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}.",
          "How much is {a} minus {b}?", "Calculate the difference between {a} and {b}."),
    "*": ("What is {a} times {b}?", "What is {a} x {b}?", "Multiply {a} by {b}.", "Compute {a} x {b}.",
          "How much is {a} times {b}?", "Calculate the product of {a} and {b}."),
}
ARITHMETIC_LEVELS = {1: ("+", (0, 9), (0, 9)), 2: ("*", (2, 9), (2, 9)), 3: ("*", (11, 39), (2, 9)),
                     4: ("*", (11, 30), (11, 30))}


def make_arithmetic(rng: random.Random, level: int) -> Question:
    operation, (low_a, high_a), (low_b, high_b) = ARITHMETIC_LEVELS[level]
    a, b = rng.randint(low_a, high_a), rng.randint(low_b, high_b)
    if operation == "-" and b > a:
        a, b = b, a
    answer = a + b if operation == "+" else a - b if operation == "-" else a * b
    return Question(f"{operation}:{a}:{b}", _pick(rng, ARITHMETIC_PHRASINGS[operation], a=a, b=b), str(answer))


# Reversing -------------------------------------------------------------------------------------

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
REVERSE_SIZES = {1: 2, 2: 3, 3: 4, 4: 5}


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
PLACES_OF_KIND = {"country": 12, "province": 36, "town": 288, "village": 576}
# People, one role per level: a few queens everybody knows, more generals, many mayors, a long
# tail of farmers; each with a home country and a birth year.
PERSON_ROLES = {1: "queen", 2: "general", 3: "mayor", 4: "farmer"}
PEOPLE_OF_ROLE = {"queen": 12, "general": 36, "mayor": 288, "farmer": 576}
PERSON_QUESTIONS = (
    ("country", ("Which country is the {role} {name} from?", "Where does the {role} {name} come from?",
                 "Name the home country of the {role} {name}.", "The {role} {name} was born in which country?")),
    ("year", ("In what year was the {role} {name} born?", "When was the {role} {name} born?",
              "Give the birth year of the {role} {name}.", "What year was the {role} {name} born in?")),
)
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


@cache
def people_table() -> dict[str, tuple[Place, ...]]:
    """The invented people of each role, each from one of the countries, born between 1800 and 1999."""
    rng = random.Random(FACT_TABLE_SEED + 1)
    taken = {place.name for places in fact_table().values() for place in places}
    countries = [place.name for place in fact_table()["country"]]
    people = {}
    for role, count in PEOPLE_OF_ROLE.items():
        members = []
        while len(members) < count:
            name = _invented_name(rng)
            if name not in taken:
                taken.add(name)
                members.append(Place(role, name, {"country": rng.choice(countries),
                                                  "year": str(rng.randint(1800, 1999))}))
        people[role] = tuple(members)
    return people


def make_person(rng: random.Random, level: int) -> Question:
    role = PERSON_ROLES[level]
    person = rng.choice(people_table()[role])
    attribute, phrasings = rng.choice(PERSON_QUESTIONS)
    return Question(f"{attribute}:{role}:{person.name}", _pick(rng, phrasings, role=role, name=person.name),
                    person.facts[attribute])


def make_fact(rng: random.Random, level: int) -> Question:
    kind = PLACE_KINDS[level]
    place = rng.choice(fact_table()[kind])
    attribute, phrasings = rng.choice(FACT_QUESTIONS[kind])
    return Question(f"{attribute}:{kind}:{place.name}", _pick(rng, phrasings, place=place.name), place.facts[attribute])


# The suite -------------------------------------------------------------------------------------

ALL_LEVELS = frozenset(LEVELS)
TASKS: tuple[Task, ...] = (
    Task("arithmetic", "arithmetic", make_arithmetic, ALL_LEVELS),
    Task("reverse", "reversing", make_reverse),
    Task("place", "places", make_fact, ALL_LEVELS),
    Task("person", "people", make_person, ALL_LEVELS),
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


def training_items(seed: int, levels_open: Callable[[str], tuple[int, ...]] | None = None) -> Iterator[Item]:
    """An endless stream of training items: skills uniform, then the tasks of a skill, then the
    levels open to it (all of them, unless a curriculum says otherwise)."""
    rng = random.Random(f"{Split.TRAIN}:{seed}")
    while True:
        skill = rng.choice(SKILLS)
        levels = levels_open(skill) if levels_open is not None else LEVELS
        yield _draw(rng, Split.TRAIN, rng.choice(_TASKS_OF_SKILL[skill]), rng.choice(levels))


_SEPARATORS = re.compile(r"\s*,\s*|\s+")


def normalize_answer(text: str) -> str:
    """An answer as it is compared: case, surrounding space, a final full stop and the spacing of
    list separators do not matter."""
    text = text.strip().rstrip(".").strip().lower()
    return ", ".join(part for part in _SEPARATORS.split(text) if part)


def is_correct(item: Item, answer: str) -> bool:
    return normalize_answer(answer) == normalize_answer(item.answer)
