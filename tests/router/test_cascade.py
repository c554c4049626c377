"""The cascade's rule: escalate to the large model when the small model's answer is empty, unsure
- its least likely token under the floor, whatever the mean - or, when configured so, cut short by
a length limit that is not the client's own max_tokens."""

from __future__ import annotations

import pytest

from router.cascade import SmallAnswer, Verdict, confidence_of, should_escalate
from router.config import CascadeConfig
from router.openai_cascade import client_token_limit, small_answers

CASCADE = CascadeConfig(enabled=True, min_confidence=-2.5, escalate_on_length=True)


def answer(text: str = "Canberra.", finish_reason: str = "stop", confidence: float | None = -0.2,
           used_client_limit: bool = False) -> SmallAnswer:
    return SmallAnswer(text, finish_reason, confidence, used_client_limit)


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


def test_a_cut_short_answer_is_kept_unless_escalate_on_length_is_set():
    """The default: the large model's server would likely cut it at the same limit."""
    cut = answer(finish_reason="length")
    assert should_escalate(cut, CascadeConfig(min_confidence=-2.5)) == (False, Verdict.ACCEPTED)
    assert not CascadeConfig().escalate_on_length


def test_an_answer_that_used_the_clients_max_tokens_is_judged_on_its_confidence():
    """The large model would stop at the same length: only doubt escalates it."""
    assert should_escalate(answer(finish_reason="length", used_client_limit=True), CASCADE) == (False, Verdict.ACCEPTED)
    unsure = answer(finish_reason="length", confidence=-3.0, used_client_limit=True)
    assert should_escalate(unsure, CASCADE) == (True, Verdict.LOW_CONFIDENCE)


@pytest.mark.parametrize(("payload", "chat", "limit"), [
    ({"max_tokens": 8}, False, 8),
    ({"max_completion_tokens": 5, "max_tokens": 9}, True, 5),
    ({"max_tokens": 9}, True, 9),
    ({"max_completion_tokens": 5}, False, None),  # not a completions field
    ({}, True, None),
    ({"max_tokens": True}, False, None),
])
def test_the_clients_limit_comes_from_its_own_field(payload, chat, limit):
    assert client_token_limit(payload, chat) == limit


def test_answers_count_their_tokens_against_the_clients_limit():
    chat_response = {"choices": [
        {"message": {"content": "a b"}, "finish_reason": "length",
         "logprobs": {"content": [{"logprob": -0.1}, {"logprob": -0.2}]}},
        {"message": {"content": "a"}, "finish_reason": "length", "logprobs": {"content": [{"logprob": -0.1}]}},
    ]}
    assert [each.used_client_limit for each in small_answers(chat_response, True, 2)] == [True, False]
    assert [each.used_client_limit for each in small_answers(chat_response, True, None)] == [False, False]
    completion = {"choices": [{"text": "a b", "finish_reason": "length", "logprobs": {"token_logprobs": [-1.0, -2.0]}}]}
    [judged] = small_answers(completion, False, 2)
    assert judged.used_client_limit and judged.confidence == -2.0


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
