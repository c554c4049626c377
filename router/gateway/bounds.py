"""Checks of the bounds a gateway store is built with (sizes, counts, durations), so that a bad
setting fails at startup with its name, not later as a store that keeps nothing."""

from __future__ import annotations


def require_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
