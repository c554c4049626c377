"""The near-miss guard: prompts that differ in a detail that changes the answer are told apart,
rewordings that keep every such detail are not."""

from __future__ import annotations

import pytest

from router.gateway.near_miss import same_exact_tokens


@pytest.mark.parametrize(("first", "second"), [
    ("What is 12 + 30?", "What is 12 + 31?"),
    ("What is 12 + 30?", "What is 12 - 30?"),
    ("Give me three tips for better sleep.", "Give me five tips for better sleep."),
    ("What is 3.14 rounded to one decimal place?", "What is 3.15 rounded to one decimal place?"),
    ("Is a tomato a fruit?", "Is a tomato not a fruit?"),
    ("Why do cats like boxes?", "Why don't cats like boxes?"),
    ("Write a Python loop with a break statement.", "Write a Python loop without a break statement."),
    ("Reverse the string \"hello\".", "Reverse the string \"world\"."),
    ("Translate 'good morning' into Spanish.", "Translate 'good night' into Spanish."),
    ("Sort the list in ascending order.", "Sort the list in descending order."),
    ("Sort the array from smallest to largest.", "Sort the array from largest to smallest."),
    ("Write a function that converts Celsius to Fahrenheit.", "Write a function that converts Fahrenheit to Celsius."),
    ("What is 50 kilograms in pounds?", "What is 50 pounds in kilograms?"),
    ("Convert 1 gallon to liters.", "Convert 1 liter to gallons."),
    ("Is it safe to eat raw eggs?", "Is it unsafe to eat raw eggs?"),
    ("Give me a synonym for happy.", "Give me an antonym for happy."),
])
def test_prompts_with_different_answers_differ(first, second):
    assert not same_exact_tokens(first, second)


@pytest.mark.parametrize(("first", "second"), [
    ("What is 12 + 30?", "What's 12 + 30?"),
    ("What is 7 times 8?", "What is 7 * 8?"),
    ("What is 100 minus 37?", "What is 100 - 37?"),
    ("Give me three tips for better sleep.", "Give me 3 tips for sleeping better."),
    ("Why don't cats like water?", "Why do cats not like water?"),
    ("Translate 'good morning' into Spanish.", "How do you say 'good morning' in Spanish?"),
    ("Convert 5 kilometers to miles.", "How many miles is 5 kilometers?"),
    ("Write a 200-word essay about rain.", "Write an essay of 200 words about rain."),
    ("Sort a list of integers in ascending order in Python.", "In Python, sort a list of integers in ascending order."),
    ("How do I reverse a list in Python?", "What's the way to reverse a Python list?"),
])
def test_rewordings_agree(first, second):
    assert same_exact_tokens(first, second)
