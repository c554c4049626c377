"""Per-request sampling parameters, validated when built so bad values never reach a step."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .structured_output import StructuredOutput

# Temperatures below this are treated as greedy decoding (argmax).
GREEDY_TEMPERATURE = 1e-5
MAX_TOP_LOGPROBS = 20
# The range torch.Generator.manual_seed accepts.
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1
# OpenAI's ranges for the additive penalties and the logit bias, and a bound on how many tokens
# one request may bias (OpenAI's is 300).
MAX_ADDITIVE_PENALTY = 2.0
MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_TOKENS = 300
# A repetition penalty divides or multiplies float32 logits: bounded so that neither overflows.
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 10.0


@dataclass(slots=True)
class SamplingParams:
    """How to pick each next token of one request, and when to stop.

    `logprobs=True` returns the log-probability of every sampled token under the
    model's raw distribution (before the bias, penalties, temperature, top-k and top-p);
    `top_logprobs=k` adds the k most likely alternatives at each position.

    Before a token is chosen, as in vLLM: `logit_bias` {token id: bias} is added to the logits;
    then `repetition_penalty` r (transformers' and vLLM's) divides a positive logit by r, and
    multiplies a negative one by r, for every token already in the prompt or the output;
    `frequency_penalty` f and `presence_penalty` p (OpenAI's) subtract f x (times the token is
    in the output so far) and p if it is there at all. A sampled token is then drawn after
    temperature, from the tokens at least `min_p` times as likely as the most likely one (vLLM's
    and transformers' min-p), then top-k, then top-p.

    `structured_output` constrains the output to a JSON schema, a regex, a choice or a grammar:
    before anything else, the tokens it forbids get -inf, and the request stops ("stop") as soon
    as the output is complete; `max_tokens` first ends it unfinished ("length"), as OpenAI's
    does. `min_tokens` does not hold back the end of a constrained output, and logprobs stay the
    model's own (before the constraint).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    structured_output: StructuredOutput | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not 0.0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or (self.top_k < 1 and self.top_k != -1):
            raise ValueError(f"top_k must be -1 (disabled) or an integer >= 1, got {self.top_k!r}")
        if not _is_number(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {self.min_p!r}")
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
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -MAX_ADDITIVE_PENALTY <= value <= MAX_ADDITIVE_PENALTY:
                raise ValueError(f"{name} must be in [-{MAX_ADDITIVE_PENALTY:g}, {MAX_ADDITIVE_PENALTY:g}], "
                                 f"got {value!r}")
        penalty = self.repetition_penalty
        if not _is_number(penalty) or not MIN_REPETITION_PENALTY <= penalty <= MAX_REPETITION_PENALTY:
            raise ValueError(f"repetition_penalty must be in [{MIN_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}] "
                             f"(1 disables it), got {penalty!r}")
        if self.logit_bias:
            self.logit_bias = _checked_logit_bias(self.logit_bias)
        else:
            self.logit_bias = None
        if self.structured_output is not None and not isinstance(self.structured_output, StructuredOutput):
            raise ValueError("structured_output must be a StructuredOutput, got "
                             f"{type(self.structured_output).__name__}")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        if self.top_logprobs:
            self.logprobs = True

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def penalizes(self) -> bool:
        """Whether any penalty applies (each needs the tokens seen so far)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked_logit_bias(logit_bias: object) -> dict[int, float]:
    if not isinstance(logit_bias, dict):
        raise ValueError("logit_bias must map token ids to biases")
    if len(logit_bias) > MAX_LOGIT_BIAS_TOKENS:
        raise ValueError(f"logit_bias may bias at most {MAX_LOGIT_BIAS_TOKENS} tokens, got {len(logit_bias)}")
    checked = {}
    for token, bias in logit_bias.items():
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise ValueError(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
        if not _is_number(bias) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise ValueError(f"each logit_bias value must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], "
                             f"got {bias!r} for token {token}")
        checked[token] = float(bias)
    return checked
