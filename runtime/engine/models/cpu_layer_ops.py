"""The layer ops as one C++ extension (runtime/engine/csrc/layer_ops.cpp), for the CPU: torch runs
each add+RMSNorm as about 8 ops, RoPE as about 10, and at a decode step's few rows their dispatch
costs far more than their arithmetic. Built on first use like the engine's other CPU kernels
(cpu_extensions.py); where it cannot be (or KSERVE_LLM_CPU_KERNELS=0) the model keeps TorchLayerOps.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType
from collections.abc import Iterable
from typing import Any

import torch

from ..cpu_extensions import load_cpu_extension
from .layer_ops import Norm, TableRopeLayerOps

LAYER_OPS_KERNEL_SOURCE = Path(__file__).parents[1] / "csrc" / "layer_ops.cpp"
LAYER_OPS_KERNEL_NAME = "kserve_llm_cpu_layer_ops"
# The dtypes the kernels compute; a model in another keeps TorchLayerOps.
KERNEL_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def load_layer_ops_kernel() -> ModuleType | None:
    """The built extension, or None if it cannot be built here (the engine then runs torch's ops)."""
    return load_cpu_extension(LAYER_OPS_KERNEL_NAME, LAYER_OPS_KERNEL_SOURCE, "layer ops")


class CpuFusedLayerOps(TableRopeLayerOps):
    """Each op one call into the extension, in place where FusedLayerOps' are. Inputs whose rows are
    not contiguous (CpuLinear's column-major bfloat16 products at several rows) are copied first:
    callers use the returned tensors, so the result is the same."""

    def __init__(
        self, kernels: ModuleType, rotary_emb: torch.nn.Module, max_positions: int, dtype: torch.dtype, hidden_act: str
    ) -> None:
        super().__init__(rotary_emb, max_positions, dtype, hidden_act)
        self.kernels = kernels

    def rms_norm(self, hidden: torch.Tensor, norm: Norm) -> torch.Tensor:
        return self.kernels.rms_norm(hidden, *norm)

    def add_rms_norm(
        self, hidden: torch.Tensor, residual: torch.Tensor, norm: Norm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In place: `hidden` (a layer's fresh output) becomes the normalised sum, `residual` the sum."""
        hidden, residual = hidden.contiguous(), residual.contiguous()
        self.kernels.add_rms_norm(hidden, residual, *norm)
        return hidden, residual

    def gated_activation(self, act_fn: torch.nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
        if not self.fused_activation:
            return super().gated_activation(act_fn, gate_up)
        return self.kernels.silu_and_mul(gate_up.contiguous())

    def rotate(
        self, queries: torch.Tensor, keys: torch.Tensor, rope: Any, head_norms: tuple[Norm, Norm] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In place (queries and keys are views of the fused QKV projection's fresh output)."""
        if self.cos_sin_tables is None:
            return super().rotate(queries, keys, rope, head_norms)
        if queries.stride(-1) != 1 or keys.stride(-1) != 1:
            queries, keys = queries.contiguous(), keys.contiguous()
        (query_norm, query_eps), (key_norm, key_eps) = head_norms or ((None, 0.0), (None, 0.0))
        self.kernels.rotary_embedding(queries, keys, rope, *self.cos_sin_tables, query_norm, query_eps, key_norm, key_eps)
        return queries, keys


def cpu_fused_layer_ops(
    rotary_emb: torch.nn.Module, table_positions: int, dtype: torch.dtype, hidden_act: str,
    norm_weights: Iterable[torch.Tensor],
) -> CpuFusedLayerOps | None:
    """The C++ ops for a model in `dtype` (RoPE from a table of `table_positions` positions), or
    None where they do not apply: a dtype the kernels lack (or norm weights in another dtype than
    the model's), or no extension."""
    if dtype not in KERNEL_DTYPES or any(weight.dtype != dtype for weight in norm_weights):
        return None
    kernels = load_layer_ops_kernel()
    if kernels is None:
        return None
    return CpuFusedLayerOps(kernels, rotary_emb, table_positions, dtype, hidden_act)
