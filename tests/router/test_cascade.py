"""The cascade's rule: escalate to the large model when the small model's answer is empty, cut
short by the length limit, or unsure - its least likely token under the floor, whatever the mean."""

from __future__ import annotations

import pytest

from router.cascade import SmallAnswer, Verdict, confidence_of, should_escalate
from router.config import CascadeConfig

CASCADE = CascadeConfig(enabled=True, min_confidence=-2.5)


def answer(text: str = "Canberra.", finish_reason: str = "stop", confidence: float | None = -0.2) -> SmallAnswer:
    return SmallAnswer(text, finish_reason, confidence)


@pytest.mark.parametrize(("small", "verdict"), [
    (answer(text=""), Verdict.EMPTY),
    (answer(text="  \n"), Verdict.EMPTY),
    (answer(finish_reason="length"), Verdict.LENGTH),
    (answer(confidence=-3.0), Verdict.LOW_CONFIDENCE),
])
def test_unsure_cut_short_or_empty_answers_are_escalated(small, verdict):
    assert should_escalate(small, CASCADE) == (True, verdict)


@pytest.mark.parametrize("small", [answer(), answer(confidence=-2.5), answer(confidence=None)])
def test_confident_complete_answers_are_kept(small):
    assert should_escalate(small, CASCADE) == (False, Verdict.ACCEPTED)


def test_confidence_is_the_least_likely_token_not_the_mean():
    # Fluent tokens around one wild guess: the mean (-0.9) looks fine, the guess (-4.0) does not.
    logprobs = [-0.05, -0.1, -4.0, -0.2, -0.15]
    assert sum(logprobs) / len(logprobs) > CASCADE.min_confidence
    assert confidence_of(logprobs) == -4.0
    assert should_escalate(answer(confidence=confidence_of(logprobs)), CASCADE) == (True, Verdict.LOW_CONFIDENCE)
    assert confidence_of([]) is None


def test_nothing_is_escalated_when_the_cascade_is_disabled():
    disabled = CascadeConfig(enabled=False)
    assert should_escalate(answer(text=""), disabled) == (False, Verdict.CASCADE_DISABLED)
