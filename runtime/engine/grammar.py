"""One request's place in its grammar (structured outputs), and the token masks of a step's
constrained rows.

A Grammar is advanced exactly once per token the engine hands to its request (LLMEngine's
`_append_tokens`, the one place a token becomes known), never while a preempted request is
recomputed: recomputing rebuilds the KV cache of tokens the grammar has already taken.

Masks are computed on the host, one row per constrained request, as a bitmask of 32 tokens per
int32 word, by llguidance's thread pool; GrammarMaskFiller runs that fill on a thread of its own
(llguidance releases the GIL), so a step starts it before its forward pass and waits for it only
when it samples. The words then go to the logits' device packed, 32 times smaller than a mask
of floats (from pinned memory on CUDA: the copy is queued, nothing waits), and are unpacked there
with one table lookup per byte into 0 or -inf, added to the constrained rows only. On the CPU a
C++ kernel (csrc/apply_token_bitmask.cpp) does the same in place instead, skipping the words that
allow all their 32 tokens and filling those that allow none, which JSON masks mostly are; the
torch path stays where the kernel cannot be built or is turned off (KSERVE_LLM_CPU_KERNELS=0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from llguidance import LLExecutor, LLMatcher

from .cpu_extensions import load_cpu_extension
from .host_to_device import to_device

_BITS_PER_WORD = 32
BITMASK_KERNEL_SOURCE = Path(__file__).parent / "csrc" / "apply_token_bitmask.cpp"
BITMASK_KERNEL_NAME = "kserve_llm_cpu_token_bitmask"


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


class GrammarMasks:
    """The masks of a step's constrained rows, one bitmask row per grammar in `grammars`, being
    filled on the host."""

    def __init__(self, grammars: list[Grammar], filled: Future[torch.Tensor]) -> None:
        self.grammars = grammars
        self._filled = filled

    def wait(self) -> torch.Tensor:
        """The filled bitmask, [len(grammars), words] int32 on the host."""
        return self._filled.result()


class GrammarMaskFiller:
    """Starts filling masks off the caller's thread. On CUDA the bitmask is filled into pinned
    memory, so that its copy to the device is queued rather than waited for."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.num_words = (vocab_size + _BITS_PER_WORD - 1) // _BITS_PER_WORD
        self.pinned = device.type == "cuda"
        if device.type == "cpu":
            load_bitmask_kernel()  # built now, not in the first constrained step
        # One fill at a time: a step waits for its masks before the next step starts its own.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        # llguidance's pool that computes the rows of one fill in parallel; made at the first fill.
        self._executor: LLExecutor | None = None

    def start(self, grammars: list[Grammar]) -> GrammarMasks:
        if self._executor is None:
            self._executor = LLExecutor()
        bitmask = torch.empty((len(grammars), self.num_words), dtype=torch.int32, pin_memory=self.pinned)
        matchers = [grammar.matcher for grammar in grammars]
        return GrammarMasks(grammars, self._thread.submit(fill_grammar_bitmask, matchers, bitmask, self._executor))


def fill_grammar_bitmask(matchers: list[LLMatcher], bitmask: torch.Tensor, executor: LLExecutor) -> torch.Tensor:
    """Fill host `bitmask` [len(matchers), words] int32: bit t of row i is set when matchers[i]
    allows token t. Returns `bitmask`.

    What llguidance.torch.fill_next_token_bitmask_par does, called directly: importing that
    module imports torch._inductor (for a torch.compile'd function we never use), about a
    second of every predictor's start-up."""
    if bitmask.dtype != torch.int32 or not bitmask.is_cpu or bitmask.dim() != 2 or not bitmask.is_contiguous():
        raise ValueError("a grammar bitmask is a contiguous 2-D int32 tensor on the host")
    rows, words = bitmask.shape
    pairs = [(matcher, row) for row, matcher in enumerate(matchers)]
    executor.unsafe_compute_mask_ptr(pairs, bitmask.data_ptr(), words * 4, rows)
    return bitmask


def apply_grammar_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """Set -inf, in place on float32 `logits` [n, vocab], at every token that bitmask row i
    forbids in logits row rows[i]. `bitmask` is on the host (pinned, for a CUDA `logits`) or
    already on the logits' device; nothing here waits for the device."""
    on_cpu = logits.device.type == "cpu" and bitmask.device.type == "cpu"
    kernel = load_bitmask_kernel() if on_cpu and logits.dtype == torch.float32 and logits.is_contiguous() else None
    if kernel is None:
        torch_apply_grammar_bitmask(logits, rows, bitmask)
    else:
        kernel(logits, bitmask.contiguous(), rows)


@functools.cache
def load_bitmask_kernel() -> Callable | None:
    """The C++ CPU kernel apply_token_bitmask(logits, bitmask, rows), or None if it cannot be
    built here (cpu_extensions.py)."""
    module = load_cpu_extension(BITMASK_KERNEL_NAME, BITMASK_KERNEL_SOURCE, "grammar mask")
    return None if module is None else module.apply_token_bitmask


def torch_apply_grammar_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """apply_grammar_bitmask on any device, in torch: the rows' -inf/0 biases, added."""
    words = bitmask.to(logits.device, non_blocking=True)
    bias = _forbidden_bias(words, logits.shape[1])
    if rows == list(range(logits.shape[0])):
        logits.add_(bias)
        return
    logits.index_add_(0, to_device(rows, torch.long, logits.device), bias)


def _forbidden_bias(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, vocab_size] float32 on the words' device: -inf where a token's bit is clear, else 0.
    Little-endian int32 words: byte k of word w holds tokens 32w + 8k ... 32w + 8k + 7, lowest
    bit first, so each byte looks up its 8 values in a table of 256 rows (several times faster
    than unpacking bits and a masked fill on the CPU, and one gather kernel on a GPU)."""
    table = _byte_bias_table(words.device)
    return F.embedding(words.view(torch.uint8).int(), table).view(len(words), -1)[:, :vocab_size]


@functools.cache
def _byte_bias_table(device: torch.device) -> torch.Tensor:
    """[256, 8] float32: row b, column i is 0 when bit i of byte b is set, else -inf."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
    return to_device(np.where(bits == 1, 0.0, -np.inf), torch.float32, device)
