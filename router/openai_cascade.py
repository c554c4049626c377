"""The cascade on the OpenAI edge, in OpenAI's wire format: the small model is asked for its tokens'
log-probabilities (chat `logprobs: true`, completions `logprobs: 0`) so that router.cascade can
judge each choice's confidence, and they are taken out of the answer again when the client did
not ask for them."""

from __future__ import annotations

from router.cascade import SmallAnswer, Verdict, confidence_of, should_escalate
from router.config import CascadeConfig


def ask_for_logprobs(payload: dict, chat: bool) -> tuple[dict, bool]:
    """The payload asking for token log-probabilities, and whether it did not already."""
    if chat:
        if payload.get("logprobs"):
            return payload, False
        return {**payload, "logprobs": True}, True
    if payload.get("logprobs") is not None:
        return payload, False
    return {**payload, "logprobs": 0}, True


def small_answers(response: dict, chat: bool, client_token_limit: int | None = None) -> list[SmallAnswer]:
    """Each choice of a (chat) completion as the cascade judges it; `client_token_limit` is the
    request's own max_tokens (client_token_limit()). A choice's tokens are counted from its
    logprobs, which the cascade asks for."""
    answers = []
    for choice in response["choices"]:
        logprobs = choice.get("logprobs") or {}
        if chat:
            text = choice["message"].get("content") or ""
            token_logprobs = [token["logprob"] for token in logprobs.get("content") or []]
        else:
            text = choice["text"]
            token_logprobs = logprobs.get("token_logprobs") or []
        used_limit = client_token_limit is not None and len(token_logprobs) >= client_token_limit
        answers.append(SmallAnswer(text, choice.get("finish_reason"), confidence_of(token_logprobs), used_limit))
    return answers


def client_token_limit(payload: dict, chat: bool) -> int | None:
    """The most tokens the client allowed each choice, if it said (chat: max_completion_tokens,
    or the older max_tokens)."""
    limit = payload.get("max_completion_tokens") if chat else None
    if limit is None:
        limit = payload.get("max_tokens")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def judge(answers: list[SmallAnswer], cascade: CascadeConfig) -> tuple[bool, Verdict]:
    """Whether to ask the large model, and why: one choice that needs it is enough, since the large
    model answers the whole request again."""
    verdict = Verdict.ACCEPTED
    for answer in answers:
        escalate, verdict = should_escalate(answer, cascade)
        if escalate:
            return True, verdict
    return False, verdict


def lowest_confidence(answers: list[SmallAnswer]) -> float | None:
    """The least confident choice's confidence (None when no choice reported one)."""
    confidences = [answer.confidence for answer in answers if answer.confidence is not None]
    return min(confidences) if confidences else None


def answer_texts(response: dict, chat: bool) -> list[str]:
    return [(choice["message"].get("content") or "") if chat else choice["text"] for choice in response["choices"]]


def same_answer(first: str, second: str) -> bool:
    """Whether two answers say the same, up to case, spacing and a final full stop."""
    return _comparable(first) == _comparable(second)


def _comparable(text: str) -> str:
    return " ".join(text.split()).rstrip(".").strip().lower()


def answers_agree(small_response: dict, large_response: dict, chat: bool) -> bool:
    """Whether the two models answered every choice alike."""
    small, large = answer_texts(small_response, chat), answer_texts(large_response, chat)
    return len(small) == len(large) and all(same_answer(first, second) for first, second in zip(small, large))


def without_logprobs(response: dict) -> dict:
    return {**response, "choices": [{**choice, "logprobs": None} for choice in response["choices"]]}
