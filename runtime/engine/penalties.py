"""The logit bias and the repetition, frequency and presence penalties (SamplingParams says what
each does), applied on the logits' device to the rows that ask for them, in vLLM's order: the
bias, then the repetition penalty, then the frequency and presence penalties.

Only the rows that ask are touched: they are gathered, changed and written back, so a batch
pays for them in proportion to the requests that use them. Each step rebuilds the counts of
the tokens seen from the sequences' own lists (host work in proportion to their lengths).
With async scheduling a sequence's newest token may still be on the device, known only as a
row of the previous step's sampled ids (`Sequence.pending_token`): it is counted from there,
so nothing here waits for the device.
"""

from __future__ import annotations

import numpy as np
import torch

from .host_to_device import to_device
from .sequence import Sequence


def needs_logit_processing(seq: Sequence) -> bool:
    return bool(seq.params.logit_bias) or seq.params.penalizes


def apply_bias_and_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """In place on float32 `logits` [rows, vocab], row i for seqs[i]."""
    rows = [row for row, seq in enumerate(seqs) if needs_logit_processing(seq)]
    if not rows:
        return
    row_index = to_device(rows, torch.long, logits.device)
    chosen = [seqs[row] for row in rows]
    selected = logits.index_select(0, row_index)
    _add_logit_bias(selected, chosen)
    if any(seq.params.penalizes for seq in chosen):
        selected = _penalize(selected, chosen)
    logits.index_copy_(0, row_index, selected)


def _add_logit_bias(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    vocab = logits.shape[1]
    positions: list[int] = []
    biases: list[float] = []
    for row, seq in enumerate(seqs):
        for token, bias in (seq.params.logit_bias or {}).items():
            positions.append(row * vocab + token)
            biases.append(bias)
    if positions:
        logits.view(-1).index_add_(0, to_device(positions, torch.long, logits.device),
                                   to_device(biases, torch.float32, logits.device))


def _penalize(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    device = logits.device
    output_counts = _output_token_counts(seqs, logits.shape[1], device)
    in_output = output_counts > 0
    repetition = [seq.params.repetition_penalty for seq in seqs]
    if any(value != 1.0 for value in repetition):
        seen = in_output | _prompt_token_mask(seqs, logits.shape[1], device)
        penalties = to_device(repetition, torch.float32, device).unsqueeze(1)
        logits = torch.where(seen, torch.where(logits > 0, logits / penalties, logits * penalties), logits)
    frequency = to_device([seq.params.frequency_penalty for seq in seqs], torch.float32, device).unsqueeze(1)
    presence = to_device([seq.params.presence_penalty for seq in seqs], torch.float32, device).unsqueeze(1)
    return logits - frequency * output_counts - presence * in_output


def _output_token_counts(seqs: list[Sequence], vocab: int, device: torch.device) -> torch.Tensor:
    """[rows, vocab] float32: how many times each token is in each sequence's output so far,
    the tokens still on the device included."""
    counts = torch.zeros((len(seqs), vocab), dtype=torch.float32, device=device).view(-1)
    known = [np.asarray(seq.output_token_ids, dtype=np.int64) + row * vocab
             for row, seq in enumerate(seqs) if seq.output_token_ids]
    if known:
        positions = to_device(np.concatenate(known), torch.long, device)
        counts.scatter_add_(0, positions, torch.ones(positions.shape, dtype=torch.float32, device=device))
    # The newest token of a sequence whose previous step is still in flight: one per sequence,
    # since at most one step is in flight; grouped by the step's sampled-ids tensor.
    pending: dict[int, tuple[torch.Tensor, list[int], list[int]]] = {}
    for row, seq in enumerate(seqs):
        if seq.num_pending_tokens and seq.pending_token is not None:
            sampled_ids, sampled_row = seq.pending_token
            _, rows, sampled_rows = pending.setdefault(id(sampled_ids), (sampled_ids, [], []))
            rows.append(row)
            sampled_rows.append(sampled_row)
    for sampled_ids, rows, sampled_rows in pending.values():
        tokens = sampled_ids.index_select(0, to_device(sampled_rows, torch.long, device))
        positions = tokens + to_device(rows, torch.long, device) * vocab
        counts.scatter_add_(0, positions, torch.ones(positions.shape, dtype=torch.float32, device=device))
    return counts.view(len(seqs), vocab)


def _prompt_token_mask(seqs: list[Sequence], vocab: int, device: torch.device) -> torch.Tensor:
    """[rows, vocab] bool: which tokens each sequence's prompt holds (for rows with a repetition
    penalty; the others' stay False, where dividing by their penalty of 1 would change nothing)."""
    mask = torch.zeros((len(seqs), vocab), dtype=torch.bool, device=device).view(-1)
    prompts = [seq.distinct_prompt_token_ids + row * vocab
               for row, seq in enumerate(seqs) if seq.params.repetition_penalty != 1.0]
    if prompts:
        mask.index_fill_(0, to_device(np.concatenate(prompts), torch.long, device), True)
    return mask.view(len(seqs), vocab)
