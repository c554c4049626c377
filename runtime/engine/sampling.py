"""Per-request sampling parameters, validated when built so bad values never reach a step."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Temperatures below this are treated as greedy decoding (argmax).
GREEDY_TEMPERATURE = 1e-5
MAX_TOP_LOGPROBS = 20
# The range torch.Generator.manual_seed accepts.
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1


@dataclass(slots=True)
class SamplingParams:
    """How to pick each next token of one request, and when to stop.

    `logprobs=True` returns the log-probability of every sampled token under the
    model's raw distribution (before temperature, top-k and top-p); `top_logprobs=k`
    adds the k most likely alternatives at each position.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not 0.0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or (self.top_k < 1 and self.top_k != -1):
            raise ValueError(f"top_k must be -1 (disabled) or an integer >= 1, got {self.top_k!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not MIN_SEED <= self.seed <= MAX_SEED
        ):
            raise ValueError(f"seed must be an integer in [{MIN_SEED}, {MAX_SEED}] or None, got {self.seed!r}")
        if (
            isinstance(self.top_logprobs, bool)
            or not isinstance(self.top_logprobs, int)
            or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS
        ):
            raise ValueError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens!r}")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        if self.top_logprobs:
            self.logprobs = True

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE
