"""The requests of a load run: prompts (text, and the token ids the transformer would make of it)
and output lengths, drawn from Python's own documentation text. Three shapes: `random` (prompt
words and output tokens in ranges), `fixed` (N prompt tokens, M output tokens) and
`shared-prefix` (one common prefix of P tokens, then a random suffix, to exercise prefix caching)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from pydoc_data.topics import topics as PYDOC_TOPICS

from transformer.tokenizer import TextTokenizer

WORKLOADS = ("random", "fixed", "shared-prefix")


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    kind: str = "random"
    min_prompt_words: int = 8
    max_prompt_words: int = 160
    min_output_tokens: int = 16
    max_output_tokens: int = 64
    # fixed and shared-prefix: the prompt's own tokens (after the prefix) and the output's.
    prompt_tokens: int = 128
    output_tokens: int = 32
    prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.kind not in WORKLOADS:
            raise ValueError(f"the workload must be one of {', '.join(WORKLOADS)}, got {self.kind!r}")
        if self.kind == "shared-prefix" and self.prefix_tokens < 1:
            raise ValueError("the shared-prefix workload needs --prefix_tokens >= 1")

    def describe(self) -> str:
        if self.kind == "random":
            return (f"random: prompts {self.min_prompt_words}-{self.max_prompt_words} words, outputs "
                    f"{self.min_output_tokens}-{self.max_output_tokens} tokens")
        prefix = f"{self.prefix_tokens} shared + " if self.kind == "shared-prefix" else ""
        return f"{self.kind}: prompts {prefix}{self.prompt_tokens} tokens, outputs {self.output_tokens} tokens"


@dataclass(frozen=True, slots=True)
class Request:
    prompt: str
    prompt_ids: list[int]
    max_tokens: int


@cache
def _corpus() -> list[str]:
    return " ".join(PYDOC_TOPICS[key] for key in sorted(PYDOC_TOPICS)).split()


def _words(rng: random.Random, count: int) -> str:
    corpus = _corpus()
    start = rng.randrange(len(corpus) - count)
    return " ".join(corpus[start:start + count])


def _text_of_tokens(tokenizer: TextTokenizer, rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens of text: a run of words cut to that many tokens (a word is at least
    one token, so `tokens` words always suffice)."""
    return tokenizer.decode(tokenizer.encode(_words(rng, tokens))[:tokens])


def build_requests(tokenizer: TextTokenizer, spec: WorkloadSpec, count: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    # The prefix comes from its own generator, so every level of a run shares the same one.
    shared = spec.kind == "shared-prefix"
    prefix = _text_of_tokens(tokenizer, random.Random(-1), spec.prefix_tokens) if shared else ""
    requests = []
    for _ in range(count):
        if spec.kind == "random":
            prompt = _words(rng, rng.randint(spec.min_prompt_words, spec.max_prompt_words))
            max_tokens = rng.randint(spec.min_output_tokens, spec.max_output_tokens)
        else:
            suffix = _text_of_tokens(tokenizer, rng, spec.prompt_tokens)
            prompt = f"{prefix} {suffix}" if prefix else suffix
            max_tokens = spec.output_tokens
        requests.append(Request(prompt, tokenizer.encode(prompt), max_tokens))
    return requests


def _prompt_of_length(tokenizer: TextTokenizer, rng: random.Random, num_ids: int, tries: int = 20) -> str:
    """A fresh prompt that encodes to `num_ids` ids (special ones included), or as near as a few
    draws come: text cut at a token boundary may encode to one token more or less."""
    best, best_gap = "", None
    for _ in range(tries):
        prompt = _text_of_tokens(tokenizer, rng, num_ids)
        gap = abs(len(tokenizer.encode(prompt)) - num_ids)
        if best_gap is None or gap < best_gap:
            best, best_gap = prompt, gap
        if gap == 0:
            break
    return best


class RequestSource:
    """Fresh requests for every run, each drawn with the next seed: no run finds its prompts in the
    prefix cache because an earlier one sent them (the shared-prefix workload's prefix apart)."""

    def __init__(self, tokenizer: TextTokenizer, spec: WorkloadSpec, seed: int) -> None:
        self.tokenizer = tokenizer
        self.spec = spec
        self.seed = seed

    def take(self, count: int) -> list[Request]:
        self.seed += 1
        return build_requests(self.tokenizer, self.spec, count, self.seed)

    def take_matched(self, count: int, variants: int) -> list[list[Request]]:
        """`count` groups of `variants` requests: in a group, prompts of one length (in tokens)
        and one output length, but different texts, so that comparing targets on a group
        compares like with like and none finds another's prompt in the prefix cache."""
        rng = random.Random(self.seed + 1_000_003)
        groups = []
        for request in self.take(count):
            group = [request]
            for _ in range(variants - 1):
                prompt = _prompt_of_length(self.tokenizer, rng, len(request.prompt_ids))
                group.append(Request(prompt, self.tokenizer.encode(prompt), request.max_tokens))
            groups.append(group)
        return groups
