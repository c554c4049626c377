"""One request's place in its grammar (structured outputs), and the token masks of a step's
constrained rows.

A Grammar is advanced exactly once per token the engine hands to its request (LLMEngine's
`_append_tokens`, the one place a token becomes known), never while a preempted request is
recomputed: recomputing rebuilds the KV cache of tokens the grammar has already taken.

Masks are computed on the host, one row per constrained request, by llguidance's thread pool
(it releases the GIL), as a bitmask of 32 tokens per int32 word; the bitmask goes to the
logits' device like every other per-step input (host_to_device.py) and is unpacked there into
-inf on each forbidden token. Rows without a grammar are never touched.
"""

from __future__ import annotations

import numpy as np
import torch
from llguidance import LLExecutor, LLMatcher
from llguidance.torch import fill_next_token_bitmask_par

from .host_to_device import to_device

_BITS_PER_WORD = 32


class Grammar:
    """A request's matcher: what its output so far allows next."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: LLMatcher) -> None:
        self.matcher = matcher

    def accept(self, token_id: int) -> bool:
        """Advance past the request's new token; False if the grammar forbids it (the matcher
        then stays in error: `error` says why)."""
        return self.matcher.consume_token(token_id)

    @property
    def is_finished(self) -> bool:
        """The output is complete: the grammar allows nothing more."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str:
        return self.matcher.get_error()


def grammar_bitmask(grammars: list[Grammar], vocab_size: int, executor: LLExecutor) -> torch.Tensor:
    """[len(grammars), words] int32 on the host: bit t of row i is set when grammars[i] allows
    token t. `executor` computes the rows in parallel."""
    words = (vocab_size + _BITS_PER_WORD - 1) // _BITS_PER_WORD
    bitmask = torch.empty((len(grammars), words), dtype=torch.int32)
    fill_next_token_bitmask_par(executor, [(grammar.matcher, row) for row, grammar in enumerate(grammars)], bitmask)
    return bitmask


def apply_grammar_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """Set -inf, in place on float32 `logits` [n, vocab], at every token that bitmask row i
    forbids in logits row rows[i]."""
    forbidden = _forbidden_tokens(bitmask, logits.shape[1], logits.device)
    if len(rows) == logits.shape[0]:
        logits.masked_fill_(forbidden, float("-inf"))
        return
    index = to_device(rows, torch.long, logits.device)
    selected = logits.index_select(0, index)
    selected.masked_fill_(forbidden, float("-inf"))
    logits.index_copy_(0, index, selected)


def _forbidden_tokens(bitmask: torch.Tensor, vocab_size: int, device: torch.device) -> torch.Tensor:
    """[rows, vocab_size] bool on `device`: True where the bitmask's bit is clear. On the CPU numpy
    unpacks the bits (several times faster than torch's shifts there); to a GPU the words travel
    packed, 32 times smaller, and are unpacked there."""
    if device.type == "cpu":
        # Little-endian int32 words: byte k of word w holds tokens 32w + 8k ... 32w + 8k + 7, lowest bit first.
        allowed = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :vocab_size]
        return torch.from_numpy(allowed == 0)
    words = to_device(bitmask.numpy(), torch.int32, device)
    shifts = torch.arange(_BITS_PER_WORD, dtype=torch.int32, device=device)
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).view(len(bitmask), -1)[:, :vocab_size]
    return allowed == 0
