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


@dataclass(frozen=True, slots=True)
class GeneratedLists:
    """A request's generated token ids and, when it asked for them, their logprobs and top
    alternatives: lists the engine only ever appends to, shared by all of the request's outputs."""

    token_ids: list[int]
    logprobs: list[float] | None
    top_logprobs: list[dict[int, float]] | None


@dataclass(slots=True)
class RequestOutput:
    """The state of one request after a step.

    `new_token_ids` holds the tokens produced since the previous output of this
    request (what a stream sends); `output_token_ids` holds all of them so far.
    `logprobs` is None unless the request asked for them.

    `output_token_ids`, `logprobs` and `top_logprobs` are read, as new lists, from the
    request's `generated` lists up to the `num_output_tokens` they held when this output was
    made: a step's output costs the same after ten tokens as after ten thousand.
    """

    request_id: str
    prompt_token_ids: list[int]
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None
    new_logprobs: list[float] | None
    num_cached_tokens: int
    metrics: RequestMetrics
    generated: GeneratedLists
    num_output_tokens: int
    error: str | None = None

    @property
    def output_token_ids(self) -> list[int]:
        return self.generated.token_ids[: self.num_output_tokens]

    @property
    def logprobs(self) -> list[float] | None:
        logprobs = self.generated.logprobs
        return None if logprobs is None else logprobs[: self.num_output_tokens]

    @property
    def top_logprobs(self) -> list[dict[int, float]] | None:
        top_logprobs = self.generated.top_logprobs
        return None if top_logprobs is None else top_logprobs[: self.num_output_tokens]
