"""The mastery-based curriculum: a skill's next level opens once its newest level is answered right
often enough over a window, or after a while regardless; answers at older levels count for
nothing; the last level is the last."""

from __future__ import annotations

from task_models.curriculum import MIN_ITEMS, OPEN_AFTER_STEPS, Curriculum


def test_a_level_opens_when_the_one_before_is_mastered():
    curriculum = Curriculum()
    assert curriculum.levels_open("arithmetic") == (1,)
    for step in range(MIN_ITEMS):
        curriculum.record(step, "arithmetic", 1, step % 20 != 0)  # 95 % right
    assert curriculum.levels_open("arithmetic") == (1, 2)
    assert curriculum.levels_open("places") == (1,)
    assert [(unlock.skill, unlock.level) for unlock in curriculum.unlocks] == [("arithmetic", 2)]


def test_a_level_not_mastered_opens_the_next_one_after_a_while():
    curriculum = Curriculum()
    for step in range(OPEN_AFTER_STEPS - 1):
        curriculum.record(step, "people", 1, False)
    assert curriculum.reached["people"] == 1
    curriculum.record(OPEN_AFTER_STEPS, "people", 1, False)
    assert curriculum.reached["people"] == 2


def test_answers_at_older_levels_do_not_count_and_the_last_level_stays():
    curriculum = Curriculum(reached={"arithmetic": 4, "reversing": 2, "places": 1, "people": 1})
    for step in range(1000):
        curriculum.record(step, "reversing", 1, True)
        curriculum.record(step, "arithmetic", 4, True)
    assert curriculum.reached["reversing"] == 2 and curriculum.reached["arithmetic"] == 4
