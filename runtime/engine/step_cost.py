"""What a step costs, learned from the steps the engine ran: seconds as a line in the number of
tokens it computes (a fixed part per step, plus a part per token, decode rows and prompt tokens
alike), fitted by least squares over recent steps with exponential forgetting. The scheduler
asks it how many prompt tokens fit beside a step's decodes within a target step time."""

from __future__ import annotations

from dataclasses import dataclass

# The weight of the newest step in the averages: about the last 1/SMOOTHING steps count.
SMOOTHING = 0.05
# Steps seen before the model is trusted; until then prompts get the whole token budget.
MIN_OBSERVED_STEPS = 8


@dataclass(slots=True)
class StepCostModel:
    """Running weighted means of tokens (x) and seconds (y) per step, and of their products."""

    observed: int = 0
    mean_tokens: float = 0.0
    mean_seconds: float = 0.0
    mean_tokens_squared: float = 0.0
    mean_tokens_seconds: float = 0.0

    def observe(self, num_tokens: int, seconds: float) -> None:
        """A step that computed `num_tokens` tokens took `seconds`."""
        weight = 1.0 if self.observed == 0 else max(SMOOTHING, 1.0 / (self.observed + 1))
        self.observed += 1
        self.mean_tokens += weight * (num_tokens - self.mean_tokens)
        self.mean_seconds += weight * (seconds - self.mean_seconds)
        self.mean_tokens_squared += weight * (num_tokens * num_tokens - self.mean_tokens_squared)
        self.mean_tokens_seconds += weight * (num_tokens * seconds - self.mean_tokens_seconds)

    def line(self) -> tuple[float, float] | None:
        """(seconds per step, seconds per token), or None before MIN_OBSERVED_STEPS steps or while
        every step computed about as many tokens (the slope is then unknown)."""
        if self.observed < MIN_OBSERVED_STEPS:
            return None
        variance = self.mean_tokens_squared - self.mean_tokens ** 2
        if variance <= max(1.0, 1e-6 * self.mean_tokens_squared):
            return None
        per_token = (self.mean_tokens_seconds - self.mean_tokens * self.mean_seconds) / variance
        if per_token <= 0:
            return None
        return max(0.0, self.mean_seconds - per_token * self.mean_tokens), per_token

    def tokens_within(self, seconds: float) -> int | None:
        """How many tokens a step can compute within `seconds`; None while unknown."""
        line = self.line()
        if line is None:
            return None
        fixed, per_token = line
        return max(0, int((seconds - fixed) / per_token))
