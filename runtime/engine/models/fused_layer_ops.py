"""The layer ops as fused Triton kernels (runtime/engine/kernels), for CUDA: one launch each
instead of transformers' chains of elementwise kernels. All launch grids depend on shapes only
and nothing reads back to the host, so decode steps stay capturable as CUDA graphs."""

from __future__ import annotations

from typing import Any

import torch

from ..kernels import add_rms_norm, rms_norm, rotary_embedding, silu_and_mul
from .layer_ops import Norm, TableRopeLayerOps


class FusedLayerOps(TableRopeLayerOps):
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

    def rotate(
        self, queries: torch.Tensor, keys: torch.Tensor, rope: Any, head_norms: tuple[Norm, Norm] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In place (queries and keys are views of the fused QKV projection's fresh output)."""
        if self.cos_sin_tables is None:
            return super().rotate(queries, keys, rope, head_norms)
        rotary_embedding(queries, keys, rope, *self.cos_sin_tables, head_norms=head_norms)
        return queries, keys

