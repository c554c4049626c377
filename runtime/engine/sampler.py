"""Batched sampling: greedy, temperature, min-p, top-k and top-p, with reproducible seeded requests.

Random choices use the exponential-race trick (argmax of probs / Exp(1) noise), where a
seeded request draws its noise from its own generator: its tokens depend only on its
seed and its logits, never on what else is in the batch.

Rows with a structured output first get -inf on every token their grammar forbids (grammar.py);
their masks are computed on the host from what each grammar has accepted so far, which is why
LLMEngine hands such a row its previous token before sampling it, and starts the masks' fill
before the forward pass when it can (see LLMEngine._launch). Other rows pay nothing for them.

Sampling is queued on the logits' device and fetched separately, so that the engine can do
its bookkeeping (or, with async scheduling, queue the next step) while the device computes,
and wait only once, for the tokens. Nothing here waits for the device: the per-row settings
go up from pinned memory, and the results come down into pinned memory as soon as the device
has them, so fetching them does not wait for work queued after them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .grammar import GrammarMaskFiller, GrammarMasks, apply_grammar_bitmask
from .host_to_device import to_device
from .penalties import apply_bias_and_penalties, needs_logit_processing
from .sampling_params import SamplingParams
from .sequence import Sequence


@dataclass(slots=True)
class SampledTokens:
    """One token per row; with them, when any row asked, the logprob of every row's token and,
    for rows that asked for alternatives, {token id: logprob} of the most likely ones."""

    token_ids: list[int]
    logprobs: list[float] | None
    top_logprobs: list[dict[int, float] | None] | None


class PendingSample:
    """Sampling queued on the device; fetch() waits for it and brings the tokens to the host.

    `token_ids` stays on the device: the next step can read its input tokens from it before
    the host has them (async scheduling)."""

    def __init__(
        self,
        token_ids: torch.Tensor,
        chosen_logprobs: torch.Tensor | None = None,
        top_values: torch.Tensor | None = None,
        top_indices: torch.Tensor | None = None,
        num_top: list[int] | None = None,
    ) -> None:
        self.token_ids = token_ids
        # How many alternatives each row asked for (top_values holds the most any row asked).
        self.num_top = num_top or []
        self._results, self._copied = _copy_to_host([token_ids, chosen_logprobs, top_values, top_indices])

    def fetch(self) -> SampledTokens:
        if self._copied is not None:
            self._copied.synchronize()
        token_ids, chosen_logprobs, top_values, top_indices = self._results
        if chosen_logprobs is None:
            return SampledTokens(token_ids.tolist(), None, None)
        top_logprobs = None
        if top_values is not None:
            values, indices = top_values.tolist(), top_indices.tolist()
            top_logprobs = [
                dict(zip(indices[row][:count], values[row][:count])) if count else None
                for row, count in enumerate(self.num_top)
            ]
        return SampledTokens(token_ids.tolist(), chosen_logprobs.tolist(), top_logprobs)


def _copy_to_host(
    tensors: list[torch.Tensor | None],
) -> tuple[list[torch.Tensor | None], torch.cuda.Event | None]:
    """Queue copies of CUDA `tensors` into pinned host memory right behind the work that makes
    them; returns the copies and an event that completes with them (None off CUDA: no copy)."""
    if tensors[0].device.type != "cuda":
        return tensors, None
    copies = []
    for tensor in tensors:
        if tensor is None:
            copies.append(None)
            continue
        copy = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        copy.copy_(tensor, non_blocking=True)
        copies.append(copy)
    copied = torch.cuda.Event()
    copied.record()
    return copies, copied


class Sampler:
    def __init__(self, eos_token_ids: tuple[int, ...], vocab_size: int, device: torch.device) -> None:
        self.eos_token_ids = eos_token_ids
        self._mask_filler = GrammarMaskFiller(vocab_size, device)

    def start_grammar_masks(self, seqs: list[Sequence]) -> GrammarMasks | None:
        """Start filling the masks of the rows among `seqs` that have a grammar (None if none
        has), to be waited for when those rows are sampled. Each grammar must already have
        every token of its request."""
        grammars = [seq.grammar for seq in seqs if _is_constrained(seq)]
        return self._mask_filler.start(grammars) if grammars else None

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence], masks: GrammarMasks | None = None) -> PendingSample:
        """Queue the choice of one token per row of `logits` [rows, vocab], row i for seqs[i].
        `masks`: from start_grammar_masks(seqs), when the caller started them earlier."""
        params = [seq.params for seq in seqs]
        raw_logprobs = None
        if any(each.logprobs for each in params):
            raw_logprobs = torch.log_softmax(logits.float(), dim=-1)
        constrained = any(map(_is_constrained, seqs))
        early_stops = self._early_stops(seqs)
        all_greedy = all(each.greedy for each in params)
        processed = any(needs_logit_processing(seq) for seq in seqs)
        if all_greedy and early_stops is None and not processed and not constrained:
            # The raw logits' argmax is their float32 copy's: no copy needed.
            token_ids = logits.argmax(dim=-1)
        else:
            logits = logits.float()
            if constrained:
                self._constrain(logits, seqs, masks or self.start_grammar_masks(seqs))
            if early_stops is not None:
                stop_rows, stop_ids = (to_device(indices, torch.long, logits.device) for indices in early_stops)
                # The value goes in as a device tensor: given a Python float, index_put_ copies it
                # to the GPU with a blocking copy, a synchronisation in every min_tokens step.
                logits.index_put_((stop_rows, stop_ids), logits.new_full((), float("-inf")))
            if processed:
                apply_bias_and_penalties(logits, seqs)
            token_ids = logits.argmax(dim=-1) if all_greedy else self._sample(logits, seqs)
        return self._pending(token_ids, raw_logprobs, params)

    def _constrain(self, logits: torch.Tensor, seqs: list[Sequence], masks: GrammarMasks) -> None:
        row_of_grammar = {id(seq.grammar): row for row, seq in enumerate(seqs)}
        rows = [row_of_grammar[id(grammar)] for grammar in masks.grammars]
        apply_grammar_bitmask(logits, rows, masks.wait())

    def _early_stops(self, seqs: list[Sequence]) -> tuple[list[int], list[int]] | None:
        """(rows, token ids) that cannot be drawn yet: stop tokens are suppressed before
        min_tokens (output tokens still being sampled count as drawn). None if there are none.
        A constrained row's grammar says when it may end, so it is left alone."""
        rows: list[int] = []
        stop_ids: list[int] = []
        for row, seq in enumerate(seqs):
            params = seq.params
            if seq.num_output_tokens < params.min_tokens and seq.grammar is None:
                stops = list(params.stop_token_ids) + ([] if params.ignore_eos else list(self.eos_token_ids))
                rows += [row] * len(stops)
                stop_ids += stops
        return (rows, stop_ids) if rows else None

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        greedy = to_device([seq.params.greedy for seq in seqs], torch.bool, logits.device)
        probs = torch.softmax(_truncated_scaled_logits(logits, [seq.params for seq in seqs]), dim=-1)
        sampled = draw(probs, [seq.generator for seq in seqs])
        return torch.where(greedy, logits.argmax(dim=-1), sampled)

    def _pending(
        self, token_ids: torch.Tensor, raw_logprobs: torch.Tensor | None, params: list[SamplingParams]
    ) -> PendingSample:
        if raw_logprobs is None:
            return PendingSample(token_ids)
        chosen = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
        num_top = [each.top_logprobs for each in params]
        top_values = top_indices = None
        if max(num_top):
            top_values, top_indices = raw_logprobs.topk(max(num_top), dim=-1)
        return PendingSample(token_ids, chosen, top_values, top_indices, num_top)


def sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """The distribution each row's token is drawn from, given its float32 logits after the bias:
    after temperature, min-p, top-k and top-p; a greedy row's is all on its argmax."""
    probs = torch.softmax(_truncated_scaled_logits(logits, params), dim=-1)
    greedy_rows = [row for row, each in enumerate(params) if each.greedy]
    if greedy_rows:
        rows = to_device(greedy_rows, torch.long, logits.device)
        one_hot = torch.zeros((len(greedy_rows), logits.shape[1]), dtype=probs.dtype, device=logits.device)
        one_hot.scatter_(1, logits.index_select(0, rows).argmax(dim=-1, keepdim=True), 1.0)
        probs.index_copy_(0, rows, one_hot)
    return probs


def draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row of `probs`, row i with its noise from generators[i] (None: torch's
    default): the exponential race, argmax of probs / Exp(1)."""
    noise = torch.empty_like(probs)
    for row, generator in enumerate(generators):
        noise[row].exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


def _truncated_scaled_logits(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Logits divided by temperature (1 for greedy rows), -inf where min-p, top-k or top-p drop a token."""
    device = logits.device
    temperatures = to_device([1.0 if each.greedy else each.temperature for each in params], torch.float32, device)
    scaled = logits / temperatures.unsqueeze(1)
    min_ps = [each.min_p for each in params]
    if any(min_ps):
        scaled = _apply_min_p(scaled, to_device(min_ps, torch.float32, device))
    top_ks = [each.top_k for each in params]
    if any(k > 0 for k in top_ks):
        scaled = _apply_top_k(scaled, top_ks)
    top_ps = [each.top_p for each in params]
    if any(p < 1.0 for p in top_ps):
        scaled = _apply_top_p(scaled, to_device(top_ps, torch.float32, device))
    return scaled


def _is_constrained(seq: Sequence) -> bool:
    return seq.grammar is not None and not seq.is_finished


def _apply_min_p(logits: torch.Tensor, min_ps: torch.Tensor) -> torch.Tensor:
    """Drop the tokens less than min_p times as likely as the row's most likely one: in log
    space, logits below the row's largest + log(min_p) (min_p 0 gives -inf: nothing dropped)."""
    floor = logits.max(dim=-1, keepdim=True).values + min_ps.log().unsqueeze(1)
    return logits.masked_fill(logits < floor, float("-inf"))


def _apply_top_k(logits: torch.Tensor, top_ks: list[int]) -> torch.Tensor:
    vocab = logits.shape[-1]
    ks = to_device([k if 0 < k < vocab else vocab for k in top_ks], torch.long, logits.device)
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits.gather(1, (ks - 1).unsqueeze(1))
    return logits.masked_fill(logits < kth, float("-inf"))


def _apply_top_p(logits: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_ps.unsqueeze(1)
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
