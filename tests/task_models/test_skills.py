"""The skill suite: deterministic, balanced, its answers right, and its held-out questions never
taught."""

from __future__ import annotations

import itertools
import re

import pytest

from task_models.skills import (
    ADD_PHRASINGS,
    ADD_THREE_PHRASINGS,
    FACT_QUESTIONS,
    LARGEST_PHRASINGS,
    SMALLEST_PHRASINGS,
    REVERSE_PHRASINGS,
    SORT_PHRASINGS,
    SUBTRACT_PHRASINGS,
    SUBTRACT_TWICE_PHRASINGS,
    LEVELS,
    SKILLS,
    TASKS,
    Item,
    Split,
    belongs_to,
    fact_table,
    held_out_items,
    is_correct,
    normalize_answer,
    training_items,
)

TASK_OF = {task.name: task for task in TASKS}


def test_the_held_out_splits_are_the_same_for_the_same_seed_and_differ_between_seeds():
    assert held_out_items(Split.TEST, 200) == held_out_items(Split.TEST, 200)
    assert held_out_items(Split.TEST, 200) != held_out_items(Split.TEST, 200, seed=1)


def test_each_skill_and_level_is_asked_equally_often():
    items = held_out_items(Split.TEST, 320)
    counts = {(skill, level): 0 for skill in SKILLS for level in LEVELS}
    for item in items:
        counts[item.skill, item.level] += 1
    assert set(counts.values()) == {320 // len(counts)}


def test_training_never_asks_a_held_out_question():
    held_out = {item.key for split in (Split.TEST, Split.ROUTER) for item in held_out_items(split, 800)
                if item.level not in TASK_OF[item.task].enumerable_levels}
    taught = {item.key for item in itertools.islice(training_items(0), 30_000)}
    assert held_out and not held_out & taught


def test_the_router_split_and_the_test_suite_share_no_question_that_could_be_held_out():
    def keys(split: Split) -> set[str]:
        return {item.key for item in held_out_items(split, 800)
                if item.level not in TASK_OF[item.task].enumerable_levels}

    assert not keys(Split.TEST) & keys(Split.ROUTER)


def test_held_out_questions_belong_to_their_split_only():
    for item in held_out_items(Split.ROUTER, 400):
        task = TASK_OF[item.task]
        assert belongs_to(Split.ROUTER, task, item.level, item.key)
        if item.level not in task.enumerable_levels:
            assert not belongs_to(Split.TRAIN, task, item.level, item.key)
            assert not belongs_to(Split.TEST, task, item.level, item.key)


def _expected_answer(item: Item) -> str:
    """The answer recomputed from the question's key, independently of the generator."""
    kind, *rest = item.key.split(":")
    if kind in ("add", "sub"):
        first, *others = map(int, rest)
        return str(first + sum(others) if kind == "add" else first - sum(others))
    values = rest[-1].split(", ")
    if kind == "max":
        return str(max(map(int, values)))
    if kind == "sort":
        return ", ".join(map(str, sorted(map(int, values))))
    if kind == "reverse":
        return ", ".join(reversed(values))
    if kind == "min":
        return str(min(map(int, values)))
    attribute, place_kind, name = kind, rest[0], rest[1]
    place = next(place for place in fact_table()[place_kind] if place.name == name)
    return place.facts[attribute]


@pytest.mark.parametrize("split", [Split.TEST, Split.ROUTER])
def test_every_answer_is_right(split):
    for item in held_out_items(split, 800):
        assert item.answer == _expected_answer(item), item
        assert is_correct(item, item.answer)
    for item in itertools.islice(training_items(3), 2000):
        assert item.answer == _expected_answer(item), item


def test_answers_are_compared_up_to_case_spacing_and_a_final_full_stop():
    assert normalize_answer(" 18, 33,56 ,58. ") == "18, 33, 56, 58"
    assert normalize_answer("Aldic.") == normalize_answer("aldic")
    assert normalize_answer("18 33") == normalize_answer("18, 33")
    assert normalize_answer("1 8") != normalize_answer("18")


def test_the_fact_table_links_each_place_to_a_place_of_the_kind_above():
    table = fact_table()
    names = {kind: {place.name for place in places} for kind, places in table.items()}
    all_names = [place.name for places in table.values() for place in places]
    assert len(all_names) == len(set(all_names))
    assert all(place.facts["country"] in names["country"] for place in table["province"])
    assert all(place.facts["province"] in names["province"] for place in table["town"])
    assert all(place.facts["town"] in names["town"] for place in table["village"])


PHRASINGS = {"addition": ADD_PHRASINGS + ADD_THREE_PHRASINGS,
             "subtraction": SUBTRACT_PHRASINGS + SUBTRACT_TWICE_PHRASINGS, "largest": LARGEST_PHRASINGS,
             "smallest": SMALLEST_PHRASINGS, "sort": SORT_PHRASINGS, "reverse": REVERSE_PHRASINGS,
             "place": tuple(phrasing for questions in FACT_QUESTIONS.values() for _, phrasings in questions
                            for phrasing in phrasings)}


def _pattern(phrasing: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(phrasing)) + "$")


def test_every_task_is_asked_in_at_least_four_phrasings():
    items = held_out_items(Split.TEST, 1600)
    for task in TASKS:
        patterns = [_pattern(phrasing) for phrasing in PHRASINGS[task.name]]
        used = {index for item in items if item.task == task.name
                for index, pattern in enumerate(patterns) if pattern.match(item.prompt)}
        assert len(used) >= 4, task.name
