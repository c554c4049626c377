"""Batched sampling: greedy, temperature, top-k and top-p, with reproducible seeded requests.

Random choices use the exponential-race trick (argmax of probs / Exp(1) noise), where a
seeded request draws its noise from its own generator: its tokens depend only on its
seed and its logits, never on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sequence import Sequence


@dataclass(slots=True)
class SampleResult:
    token_id: int
    logprob: float | None
    top_logprobs: dict[int, float] | None


class Sampler:
    def __init__(self, eos_token_ids: tuple[int, ...]) -> None:
        self.eos_token_ids = eos_token_ids

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[SampleResult]:
        logits = logits.float()
        raw_logprobs = None
        if any(seq.params.logprobs for seq in seqs):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        self._suppress_early_stops(logits, seqs)
        if all(seq.params.greedy for seq in seqs):
            token_ids = logits.argmax(dim=-1)
        else:
            token_ids = self._sample(logits, seqs)
        return self._results(token_ids, raw_logprobs, seqs)

    def _suppress_early_stops(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """Stop tokens cannot be drawn before a request's min_tokens."""
        for row, seq in enumerate(seqs):
            params = seq.params
            if len(seq.output_token_ids) < params.min_tokens:
                stops = list(params.stop_token_ids) + ([] if params.ignore_eos else list(self.eos_token_ids))
                if stops:
                    logits[row, stops] = float("-inf")

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        device = logits.device
        greedy = torch.tensor([seq.params.greedy for seq in seqs], device=device)
        temperatures = torch.tensor(
            [1.0 if seq.params.greedy else seq.params.temperature for seq in seqs], device=device
        )
        scaled = logits / temperatures.unsqueeze(1)
        top_ks = [seq.params.top_k for seq in seqs]
        if any(k > 0 for k in top_ks):
            scaled = _apply_top_k(scaled, top_ks)
        top_ps = [seq.params.top_p for seq in seqs]
        if any(p < 1.0 for p in top_ps):
            scaled = _apply_top_p(scaled, torch.tensor(top_ps, device=device))
        probs = torch.softmax(scaled, dim=-1)
        noise = torch.empty_like(probs)
        for row, seq in enumerate(seqs):
            noise[row].exponential_(generator=seq.generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(greedy, logits.argmax(dim=-1), sampled)

    def _results(
        self, token_ids: torch.Tensor, raw_logprobs: torch.Tensor | None, seqs: list[Sequence]
    ) -> list[SampleResult]:
        ids = token_ids.tolist()
        chosen_logprobs = top_values = top_indices = None
        if raw_logprobs is not None:
            chosen_logprobs = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1).tolist()
            max_top = max(seq.params.top_logprobs for seq in seqs)
            if max_top:
                values, indices = raw_logprobs.topk(max_top, dim=-1)
                top_values, top_indices = values.tolist(), indices.tolist()
        results = []
        for row, seq in enumerate(seqs):
            logprob = top = None
            if seq.params.logprobs:
                logprob = chosen_logprobs[row]
                k = seq.params.top_logprobs
                if k:
                    top = dict(zip(top_indices[row][:k], top_values[row][:k]))
            results.append(SampleResult(ids[row], logprob, top))
        return results


def _apply_top_k(logits: torch.Tensor, top_ks: list[int]) -> torch.Tensor:
    vocab = logits.shape[-1]
    ks = torch.tensor([k if 0 < k < vocab else vocab for k in top_ks], device=logits.device)
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
