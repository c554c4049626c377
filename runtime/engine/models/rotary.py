"""Rotary position embeddings for the llama family's checkpoints we read ourselves: the same
inverse frequencies and cos/sin that transformers' rotary embeddings compute (so greedy outputs
stay token for token transformers'), for the RoPE types whose frequencies are fixed up front.
Types that pick frequencies from the batch (dynamic, longrope) or that we have not written
(yarn, ...) load through transformers instead (NATIVE_ROPE_TYPES)."""

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


INVERSE_FREQUENCIES: dict[str, Callable[[RopeParameters, int], torch.Tensor]] = {
    "default": _default_inverse_frequencies,
    "linear": _linear_inverse_frequencies,
    "llama3": _llama3_inverse_frequencies,
}
NATIVE_ROPE_TYPES = tuple(INVERSE_FREQUENCIES)


class RotaryEmbedding(torch.nn.Module):
    """forward(hidden, positions [1, tokens]) -> (cos, sin), each [1, tokens, head_dim] in the
    hidden states' dtype: the interface of transformers' rotary embeddings, which the layer ops
    call (layer_ops.py, fused_layer_ops.py)."""

    def __init__(self, rope: RopeParameters, head_dim: int, device: torch.device) -> None:
        super().__init__()
        self.rope_type = rope["rope_type"]
        self.register_buffer(
            "inv_freq", INVERSE_FREQUENCIES[self.rope_type](rope, head_dim).to(device), persistent=False
        )

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(device=hidden.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(hidden.dtype), angles.sin().to(hidden.dtype)
