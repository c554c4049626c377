"""A mastery-based curriculum: every skill starts at level 1, and its next level enters the
training stream once the model answers the current one right often enough - exact match of the
whole answer, teacher-forced, on the training batches themselves - over a window of recent items.
A model that learns faster, or trains longer, reaches harder levels: what it can do at the end is
what its capacity and its training bought, level by level."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from task_models.skills import LEVELS, SKILLS

MASTERY = 0.9
WINDOW_ITEMS = 256
MIN_ITEMS = 128
# A level that is not mastered within this many steps opens the next one anyway: a table too big
# to hold must not keep a model from ever seeing the rest of the skill.
OPEN_AFTER_STEPS = 600


@dataclass(frozen=True, slots=True)
class Unlock:
    step: int
    skill: str
    level: int


@dataclass
class Curriculum:
    mastery: float = MASTERY
    window_items: int = WINDOW_ITEMS
    reached: dict[str, int] = field(default_factory=lambda: {skill: LEVELS[0] for skill in SKILLS})
    unlocks: list[Unlock] = field(default_factory=list)
    _recent: dict[str, deque] = field(default_factory=dict)
    _opened_at: dict[str, int] = field(default_factory=dict)

    def levels_open(self, skill: str) -> tuple[int, ...]:
        return tuple(level for level in LEVELS if level <= self.reached[skill])

    def record(self, step: int, skill: str, level: int, correct: bool) -> None:
        """One training answer; opens the skill's next level once its newest one is mastered, or
        has been open OPEN_AFTER_STEPS steps."""
        if level != self.reached[skill] or level == LEVELS[-1]:
            return
        recent = self._recent.setdefault(skill, deque(maxlen=self.window_items))
        recent.append(correct)
        mastered = len(recent) >= MIN_ITEMS and sum(recent) / len(recent) >= self.mastery
        if mastered or step - self._opened_at.get(skill, 0) >= OPEN_AFTER_STEPS:
            self.reached[skill] = level + 1
            self._opened_at[skill] = step
            self.unlocks.append(Unlock(step, skill, level + 1))
            recent.clear()

    def as_dict(self) -> dict:
        return {"mastery": self.mastery, "window_items": self.window_items, "reached": dict(self.reached),
                "unlocks": [{"step": unlock.step, "skill": unlock.skill, "level": unlock.level}
                            for unlock in self.unlocks]}
