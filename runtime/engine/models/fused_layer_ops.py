"""The layer ops as fused Triton kernels (runtime/engine/kernels), for CUDA: one launch each
instead of transformers' chains of elementwise kernels. All launch grids depend on shapes only
and nothing reads back to the host, so decode steps stay capturable as CUDA graphs."""

from __future__ import annotations

from typing import Any

import torch

from ..kernels import add_rms_norm, rms_norm, rotary_embedding, silu_and_mul
from .layer_ops import Norm, TorchLayerOps, rope_depends_on_longest_position


class FusedLayerOps(TorchLayerOps):
    """RoPE runs from a cos/sin table over every position the model allows, built once; RoPE
    types that choose frequencies per batch (dynamic, longrope) keep torch's rotation, and
    activations other than SiLU keep torch's."""

    def __init__(self, rotary_emb: torch.nn.Module, max_positions: int, dtype: torch.dtype, hidden_act: str) -> None:
        super().__init__(rotary_emb)
        self.fused_activation = hidden_act == "silu"
        self.cos_sin_tables = None
        if not rope_depends_on_longest_position(rotary_emb):
            self.cos_sin_tables = _cos_sin_tables(rotary_emb, max_positions, dtype)

    def linear(self, linear: torch.nn.Linear) -> torch.nn.Module:
        """Always the plain Linear: the kernels read rows with unit stride, and the CPU linear's
        row-sliced fallback (which the interpreter could get) returns column-major outputs."""
        return linear

    def rms_norm(self, hidden: torch.Tensor, norm: Norm) -> torch.Tensor:
        return rms_norm(hidden, *norm)

    def add_rms_norm(
        self, hidden: torch.Tensor, residual: torch.Tensor, norm: Norm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In place: `hidden` (a layer's fresh output) becomes the normalised sum, `residual` the sum."""
        return add_rms_norm(hidden, residual, *norm)

    def gated_activation(self, act_fn: torch.nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
        if not self.fused_activation:
            return super().gated_activation(act_fn, gate_up)
        return silu_and_mul(gate_up)

    def rope_for_step(self, hidden: torch.Tensor, positions: torch.Tensor) -> Any:
        """The positions themselves: the kernel looks up their rows of the table."""
        if self.cos_sin_tables is None:
            return super().rope_for_step(hidden, positions)
        return positions

    def rotate(
        self, queries: torch.Tensor, keys: torch.Tensor, rope: Any, head_norms: tuple[Norm, Norm] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In place (queries and keys are views of the fused QKV projection's fresh output)."""
        if self.cos_sin_tables is None:
            return super().rotate(queries, keys, rope, head_norms)
        rotary_embedding(queries, keys, rope, *self.cos_sin_tables, head_norms=head_norms)
        return queries, keys


def _cos_sin_tables(
    rotary_emb: torch.nn.Module, max_positions: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary embedding's own cos and sin (transformers' or ours, rotary.py) for positions
    0 .. max_positions - 1, [max_positions, head_dim] in the model's dtype: the values its forward
    would compute for those positions."""
    device = rotary_emb.inv_freq.device
    positions = torch.arange(max_positions, device=device).unsqueeze(0)
    with torch.no_grad():
        cos, sin = rotary_emb(torch.empty(0, dtype=dtype, device=device), positions)
    return cos[0].contiguous(), sin[0].contiguous()
