"""The skill suite: deterministic, balanced, its answers right, and its held-out questions never
taught."""

from __future__ import annotations

import itertools
import re

import pytest

from task_models.skills import (
    ARITHMETIC_PHRASINGS,
    FACT_QUESTIONS,
    LEVELS,
    PEOPLE_OF_ROLE,
    PERSON_QUESTIONS,
    PERSON_ROLES,
    PLACES_OF_KIND,
    REVERSE_PHRASINGS,
    SKILLS,
    TASKS,
    Item,
    Split,
    belongs_to,
    fact_table,
    held_out_items,
    is_correct,
    normalize_answer,
    people_table,
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
    if kind in ("+", "*"):
        a, b = map(int, rest)
        return str(a + b if kind == "+" else a * b)
    if kind == "reverse":
        return ", ".join(reversed(rest[0].split(", ")))
    attribute, group, name = kind, rest[0], rest[1]
    table = people_table() if group in PEOPLE_OF_ROLE else fact_table()
    return next(entry for entry in table[group] if entry.name == name).facts[attribute]


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
    people = [person.name for persons in people_table().values() for person in persons]
    all_names = [place.name for places in table.values() for place in places] + people
    assert len(all_names) == len(set(all_names))
    assert all(place.facts["country"] in names["country"] for place in table["province"])
    assert all(place.facts["province"] in names["province"] for place in table["town"])
    assert all(place.facts["town"] in names["town"] for place in table["village"])
    assert all(person.facts["country"] in names["country"] for persons in people_table().values()
               for person in persons)


def test_each_level_of_a_table_is_larger_and_rarer_than_the_one_before():
    for sizes in (PLACES_OF_KIND, PEOPLE_OF_ROLE):
        counts = list(sizes.values())
        assert counts == sorted(counts) and counts[-1] >= 32 * counts[0]


PHRASINGS = {"arithmetic": tuple(phrasing for phrasings in ARITHMETIC_PHRASINGS.values() for phrasing in phrasings),
             "reverse": REVERSE_PHRASINGS,
             "place": tuple(phrasing for questions in FACT_QUESTIONS.values() for _, phrasings in questions
                            for phrasing in phrasings),
             "person": tuple(phrasing.replace("{role}", role) for _, phrasings in PERSON_QUESTIONS
                             for phrasing in phrasings for role in PERSON_ROLES.values())}


def _pattern(phrasing: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(phrasing)) + "$")


def test_every_task_is_asked_in_at_least_four_phrasings():
    items = held_out_items(Split.TEST, 1600)
    for task in TASKS:
        patterns = [_pattern(phrasing) for phrasing in PHRASINGS[task.name]]
        used = {index for item in items if item.task == task.name
                for index, pattern in enumerate(patterns) if pattern.match(item.prompt)}
        assert len(used) >= 4, task.name
