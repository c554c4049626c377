"""Rotary position embeddings for the llama family's checkpoints we read ourselves: the same
inverse frequencies and cos/sin that transformers' rotary embeddings compute (so greedy outputs
stay token for token transformers'), for the RoPE types whose frequencies are fixed up front.
Types that pick frequencies from the batch (dynamic, longrope) or that we have not written
load through transformers instead (NATIVE_ROPE_TYPES)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

RopeParameters = Mapping[str, Any]


def _default_inverse_frequencies(rope: RopeParameters, head_dim: int) -> torch.Tensor:
    # The same float32 ops as transformers', so the tables match it bit for bit.
    return 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def _linear_inverse_frequencies(rope: RopeParameters, head_dim: int) -> torch.Tensor:
    """Positions divided by `factor`, as a division of the frequencies."""
    return _default_inverse_frequencies(rope, head_dim) / rope["factor"]


def _llama3_inverse_frequencies(rope: RopeParameters, head_dim: int) -> torch.Tensor:
    """Llama 3.1's: long wavelengths divided by `factor`, short ones kept, those between smoothed."""
    inv_freq = _default_inverse_frequencies(rope, head_dim)
    factor, low_freq_factor, high_freq_factor = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context_len = rope["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth_factor) * scaled / factor + smooth_factor * scaled
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed, scaled)


def _yarn_inverse_frequencies(rope: RopeParameters, head_dim: int) -> torch.Tensor:
    """YaRN's: each frequency between its extrapolated (as trained) and interpolated (divided by
    `factor`) value, by a linear ramp over the dimensions between beta_fast and beta_slow rotations
    of the original context."""
    base, factor = rope["rope_theta"], rope["factor"]
    original_max_positions = rope["original_max_position_embeddings"]
    position_frequencies = base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    extrapolated = 1.0 / position_frequencies
    interpolated = 1.0 / (factor * position_frequencies)

    def correction_dimension(num_rotations: float) -> float:
        return (head_dim * math.log(original_max_positions / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = correction_dimension(rope.get("beta_fast") or 32)
    high = correction_dimension(rope.get("beta_slow") or 1)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    return interpolated * (1 - extrapolation_factor) + extrapolated * extrapolation_factor


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def attention_scaling(rope: RopeParameters) -> float:
    """What cos and sin are multiplied by: 1 but for YaRN, whose attention factor it is."""
    if rope["rope_type"] != "yarn":
        return 1.0
    if rope.get("attention_factor") is not None:
        return rope["attention_factor"]
    factor, mscale, mscale_all_dim = rope["factor"], rope.get("mscale"), rope.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim))
    return _yarn_mscale(factor)


INVERSE_FREQUENCIES: dict[str, Callable[[RopeParameters, int], torch.Tensor]] = {
    "default": _default_inverse_frequencies,
    "linear": _linear_inverse_frequencies,
    "llama3": _llama3_inverse_frequencies,
    "yarn": _yarn_inverse_frequencies,
}
NATIVE_ROPE_TYPES = tuple(INVERSE_FREQUENCIES)


class RotaryEmbedding(torch.nn.Module):
    """forward(hidden, positions [1, tokens]) -> (cos, sin), each [1, tokens, head_dim] in the
    hidden states' dtype: the interface of transformers' rotary embeddings, which the layer ops
    call (layer_ops.py, fused_layer_ops.py)."""

    def __init__(self, rope: RopeParameters, head_dim: int, device: torch.device) -> None:
        super().__init__()
        self.rope_type = rope["rope_type"]
        self.attention_scaling = attention_scaling(rope)
        self.register_buffer(
            "inv_freq", INVERSE_FREQUENCIES[self.rope_type](rope, head_dim).to(device), persistent=False
        )

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(device=hidden.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling
        return cos.to(hidden.dtype), sin.to(hidden.dtype)
