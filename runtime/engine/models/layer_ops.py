"""The small operations between a llama-family layer's matmuls: RMSNorm (with the residual add
before it), RoPE (with Qwen3's per-head q/k norms before it) and the gated activation.

`TorchLayerOps` computes them as transformers does, op by op: the path wherever no fused kernel
runs. On CUDA, `FusedLayerOps` (fused_layer_ops.py) runs each as one Triton kernel; on the CPU,
`CpuFusedLayerOps` (cpu_layer_ops.py) as one call into a C++ extension.
"""

from __future__ import annotations

from typing import Any

import torch

from ..cpu_linear import cpu_linear_if_cpu

# transformers' RoPE variants that choose frequencies from the batch's longest position
# (with a host-side comparison in some transformers versions).
LONGEST_POSITION_ROPE_TYPES = ("dynamic", "longrope")
# (weight, eps) of one RMSNorm as the checkpoint has it.
NormWeights = tuple[torch.Tensor, float]
# What the ops' rms_norm() takes: NormWeights, or a form derived from them (Gemma's 1 + weight).
Norm = tuple[torch.Tensor, float]


class TorchLayerOps:
    def __init__(self, rotary_emb: torch.nn.Module) -> None:
        self.rotary_emb = rotary_emb

    def linear(self, linear: torch.nn.Linear) -> torch.nn.Module:
        """The module that runs one of the layer's projections."""
        return cpu_linear_if_cpu(linear)

    def norm(self, weights: NormWeights) -> Norm:
        """What rms_norm() needs of one of the model's RMSNorms."""
        return weights

    def rms_norm(self, hidden: torch.Tensor, norm: Norm) -> torch.Tensor:
        """transformers' RMSNorm: normalise in float32, scale in the input dtype."""
        weight, eps = norm
        return weight * normalised_rms(hidden, eps).to(hidden.dtype)

    def add_rms_norm(
        self, hidden: torch.Tensor, residual: torch.Tensor, norm: Norm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(RMSNorm of residual + hidden, residual + hidden)."""
        residual = residual + hidden
        return self.rms_norm(residual, norm), residual

    def gated_activation(self, act_fn: torch.nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
        """act_fn(gate) * up, the gate being the first half of the fused gate/up output."""
        gate, up = gate_up.chunk(2, dim=-1)
        return act_fn(gate) * up

    def rope_for_step(self, hidden: torch.Tensor, positions: torch.Tensor, *rotary_args: Any) -> Any:
        """What rotate() needs for this step's tokens: here their cos and sin, [tokens, 1, head_dim].
        `rotary_args` go to the model's rotary embedding after the positions (Gemma 3's layer type)."""
        cos, sin = self.rotary_emb(hidden, positions.unsqueeze(0), *rotary_args)
        return cos[0].unsqueeze(1), sin[0].unsqueeze(1)

    def rotate(
        self, queries: torch.Tensor, keys: torch.Tensor, rope: Any, head_norms: tuple[Norm, Norm] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE of queries [tokens, heads, head_dim] and keys [tokens, kv_heads, head_dim], each
        head RMS-normalised first when the model has `head_norms` (query norm, key norm)."""
        if head_norms is not None:
            queries, keys = self.rms_norm(queries, head_norms[0]), self.rms_norm(keys, head_norms[1])
        cos, sin = rope
        return _rotate_half_embedding(queries, cos, sin), _rotate_half_embedding(keys, cos, sin)


class TableRopeLayerOps(TorchLayerOps):
    """The base of the fused ops (Triton's, the CPU's C++ ones): RoPE from a cos/sin table over
    every position the model allows, built once, so a step's RoPE is only its positions. RoPE
    types that choose frequencies per batch (dynamic, longrope) keep torch's rotation, and
    activations other than SiLU keep torch's."""

    def __init__(self, rotary_emb: torch.nn.Module, max_positions: int, dtype: torch.dtype, hidden_act: str) -> None:
        super().__init__(rotary_emb)
        self.fused_activation = hidden_act == "silu"
        self.cos_sin_tables = None
        if not rope_depends_on_longest_position(rotary_emb):
            self.cos_sin_tables = cos_sin_tables(rotary_emb, max_positions, dtype)

    def rope_for_step(self, hidden: torch.Tensor, positions: torch.Tensor, *rotary_args: Any) -> Any:
        """The positions themselves: the kernel looks up their rows of the table."""
        if self.cos_sin_tables is None:
            return super().rope_for_step(hidden, positions, *rotary_args)
        return positions


def normalised_rms(hidden: torch.Tensor, eps: float) -> torch.Tensor:
    """`hidden` in float32 divided by its root mean square over the last dimension."""
    hidden = hidden.float()
    return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)


def _rotate_half_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_depends_on_longest_position(rotary_emb: torch.nn.Module) -> bool:
    """Whether RoPE picks its frequencies from the batch's positions (so no cos/sin table can be
    built up front), which some transformers versions decide on the host."""
    rope_type = str(getattr(rotary_emb, "rope_type", "default"))
    return any(name in rope_type for name in LONGEST_POSITION_ROPE_TYPES)


def cos_sin_tables(
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
