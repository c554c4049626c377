"""The committed task models, through this project's engine as they are served: both load through
the ordinary checkpoint path, and on a deterministic slice of the held-out suite the large model
answers far more than the small one, which does better on easy questions than on hard ones."""

from __future__ import annotations

from collections import defaultdict

import pytest

from task_models.checkpoint import SIZES, checkpoint_dir
from task_models.evaluate import TEST_SEED, accuracy, answer_items
from task_models.skills import Split, held_out_items

ITEMS = 208


@pytest.fixture(scope="module")
def graded() -> dict:
    items = held_out_items(Split.TEST, ITEMS, TEST_SEED)
    return {size: answer_items(checkpoint_dir(size), items, num_threads=1) for size in SIZES}


def test_the_large_model_answers_far_more_than_the_small_one(graded):
    """On the whole suite: 64.6 % and 99.7 % (MODEL_CARD.md); the design asks for a 30-point gap
    with the small model at 40 % or more."""
    small, large = accuracy(graded["small"]), accuracy(graded["large"])
    assert small >= 0.40, f"small {small:.3f}"
    assert large >= small + 0.30, f"small {small:.3f}, large {large:.3f}"


def test_the_small_model_answers_more_easy_questions_than_hard_ones(graded):
    by_level = {size: defaultdict(list) for size in SIZES}
    for size in SIZES:
        for each in graded[size]:
            by_level[size][each.item.level].append(each)
    # Both know the small tables (levels 1 and 2); only the large one knows the long tails.
    assert accuracy(by_level["small"][1]) >= 0.95 and accuracy(by_level["large"][1]) >= 0.95
    assert accuracy(by_level["small"][1]) >= accuracy(by_level["small"][4]) + 0.5
    assert all(accuracy(by_level["large"][level]) >= accuracy(by_level["small"][level]) + 0.3 for level in (3, 4))


def test_the_committed_model_card_quotes_the_measured_table():
    for size in SIZES:
        card = (checkpoint_dir(size) / "MODEL_CARD.md").read_text()
        assert "## Accuracy on the held-out test suite" in card and "| places |" in card
