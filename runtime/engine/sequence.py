"""Request state as the scheduler sees it: tokens, progress, KV blocks and timestamps."""

from __future__ import annotations

import enum
import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .outputs import GeneratedLists
from .sampling_params import SamplingParams

if TYPE_CHECKING:
    from .grammar import Grammar


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    LENGTH = "length"
    STOP = "stop"
    ABORT = "abort"
    ERROR = "error"


@dataclass(eq=False)
class Sequence:
    """One request. `num_computed_tokens` counts tokens whose KV is in the cache;
    a preempted request drops back to 0 and is recomputed (prefix hits make that cheap)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_order: int
    priority: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[dict[int, float]] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_computed_tokens: int = 0
    num_cached_prompt_tokens: int = 0
    # Only ever appended to, or replaced by a new list: decode graphs restage a row by identity.
    block_table: list[int] = field(default_factory=list)
    # Chained hashes of this sequence's full blocks, in order (prefix caching).
    block_hashes: list[bytes] = field(default_factory=list)
    # How many leading blocks of block_table are registered in the prefix cache.
    num_hashed_blocks: int = 0
    generator: torch.Generator | None = None
    # The request's structured output, advanced once per token it is handed (grammar.py).
    grammar: Grammar | None = field(default=None, repr=False)
    # Tokens sampled by steps still running on the device (async scheduling): counted in
    # num_tokens, not yet in output_token_ids. `pending_token` is where the newest one will be:
    # (that step's sampled token ids on the device, this sequence's row in them).
    num_pending_tokens: int = 0
    pending_token: tuple[torch.Tensor, int] | None = field(default=None, repr=False)
    num_preemptions: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    # The output lists above, as every RequestOutput of this request shares them.
    generated: GeneratedLists = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generated = GeneratedLists(
            self.output_token_ids,
            self.output_logprobs if self.params.logprobs else None,
            self.output_top_logprobs if self.params.top_logprobs else None,
        )

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @functools.cached_property
    def distinct_prompt_token_ids(self) -> np.ndarray:
        """The prompt's token ids, each once, for the repetition penalty (kept: the prompt never
        changes, and converting it anew each step would cost more than the rest of the step)."""
        return np.unique(np.asarray(self.prompt_token_ids, dtype=np.int64))

    @property
    def num_tokens(self) -> int:
        """Prompt and output tokens, those still being sampled on the device included."""
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_pending_tokens

    @property
    def num_known_tokens(self) -> int:
        """Prompt and output tokens whose ids the host has."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Output tokens, those still being sampled on the device included."""
        return len(self.output_token_ids) + self.num_pending_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def sort_key(self) -> tuple[int, int]:
        """Scheduling order: lower priority value first, then first come first served."""
        return (self.priority, self.arrival_order)

    def token_at(self, index: int) -> int:
        """A known token's id (index < num_known_tokens)."""
        if index < len(self.prompt_token_ids):
            return self.prompt_token_ids[index]
        return self.output_token_ids[index - len(self.prompt_token_ids)]

    def tokens(self, start: int, end: int) -> list[int]:
        """Token ids in [start, end) over prompt followed by output (end <= num_known_tokens)."""
        num_prompt = len(self.prompt_token_ids)
        if end <= num_prompt:
            return self.prompt_token_ids[start:end]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt:end - num_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - num_prompt]
