"""What the engine hands back for each request, after every step and at the end."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RequestMetrics:
    """Monotonic timestamps (seconds) of a request's life, for latency metrics."""

    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    last_token_time: float | None
    finished_time: float | None
    num_preemptions: int


@dataclass(slots=True)
class RequestOutput:
    """The state of one request after a step.

    `new_token_ids` holds the tokens produced since the previous output of this
    request (what a stream sends); `output_token_ids` holds all of them so far.
    `logprobs` is None unless the request asked for them.
    """

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None
    logprobs: list[float] | None
    new_logprobs: list[float] | None
    top_logprobs: list[dict[int, float]] | None
    num_cached_tokens: int
    metrics: RequestMetrics
    error: str | None = None
