"""benchmarks/routing/suites.py: the real models' suites are fixed by their seed, every prompt is a
completion, and each checker takes the right answer in any reasonable form, on the first line,
and refuses a wrong one."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.routing.suites import (
    check_exact,
    check_letter,
    check_number,
    check_numbers,
    check_phrase,
    check_repeated,
    function_body,
    suite,
)


@pytest.fixture(scope="module")
def items():
    return suite()


def test_the_suite_is_a_few_hundred_items_in_four_categories_fixed_by_its_seed(items):
    assert 300 <= len(items) <= 600
    assert set(Counter(item.category for item in items)) == {"arithmetic", "facts", "code", "instructions"}
    assert [(item.key, item.prompt) for item in suite()] == [(item.key, item.prompt) for item in items]


def test_every_prompt_is_a_few_shot_completion(items):
    endings = {"arithmetic": " =", "facts": "\nA:", "instructions": "\nA:", "code": '"""'}
    for item in items:
        assert item.prompt.endswith(endings[item.category]), item.key
        # Solved examples first: the same kind of question, answered, at least twice.
        assert item.prompt.count("\n") >= 2, item.key


def test_each_question_item_takes_its_expected_answer_and_refuses_a_wrong_one(items):
    for item in items:
        if item.category != "code":
            assert item.is_correct(f" {item.expected}\nQ: and more"), item.key
            assert not item.is_correct(" zzz"), item.key


def test_numbers_are_read_as_the_first_number_of_the_first_line():
    assert check_number(42, " 42")
    assert check_number(42, " 42 apples.")
    assert check_number(-5, "-5")
    assert check_number(1200, " 1,200")
    assert not check_number(42, " 41")
    assert not check_number(42, " forty-two")
    assert not check_number(42, "\n42")
    assert not check_number(42, " 4 + 38 = 42")


def test_facts_match_whole_words_whatever_the_case_and_accents():
    assert check_phrase(("Paris",), " Paris")
    assert check_phrase(("Paris",), " The capital of France is paris.")
    assert check_phrase(("Bogota",), " Bogotá")
    assert check_phrase(("Kyiv", "Kiev"), " Kiev")
    assert not check_phrase(("Paris",), " Parisian food")
    assert not check_phrase(("Paris",), " Lyon\nParis")
    assert not check_phrase(("Paris",), "")


def test_instructions_are_checked_on_the_words_alone():
    assert check_exact("BUTTON", ' "BUTTON".')
    assert not check_exact("BUTTON", " Button")
    assert not check_exact("BUTTON", " BUTTON BUTTON")
    assert check_repeated("tiger", 3, " tiger, tiger, tiger")
    assert not check_repeated("tiger", 3, " tiger tiger")
    assert check_letter("p", ' "P"')
    assert not check_letter("p", " pencil")
    assert check_numbers([3, 4, 5], " 3, 4, 5")
    assert not check_numbers([3, 4, 5], " 3, 4, 5, 6")


def test_a_function_ends_where_its_indentation_does():
    assert function_body("\n    x = 1\n\n    return x\nprint(f())") == "\n    x = 1\n\n    return x"


def test_code_items_run_the_completed_function(items):
    reverse = next(item for item in items if item.key == "function:reverse_string")
    assert reverse.is_correct("\n    return s[::-1]")
    assert reverse.is_correct("\n    return s[::-1]\nprint(reverse_string('abc'))")
    assert not reverse.is_correct("\n    return s")
    assert not reverse.is_correct("\n    return 1 / 0")
    assert not reverse.is_correct("\n    import os\n    return s[::-1]")
    assert not reverse.is_correct(" zzz")
