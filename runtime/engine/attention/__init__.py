"""Attention backends over the paged KV cache, registered with transformers by name."""

from __future__ import annotations

import logging
from typing import Callable

import torch
from transformers import AttentionInterface

from .cpu_kernels import cpp_decode_attention, load_decode_kernel
from .metadata import AttentionMetadata, PrefillChunk
from .torch_backend import paged_attention, paged_attention_forward, torch_decode_attention

logger = logging.getLogger(__name__)

# The name models are loaded with (`attn_implementation=...`).
PAGED_ATTENTION = "kserve_paged"

AttentionInterface.register(PAGED_ATTENTION, paged_attention_forward)



def select_decode_attention(backend: str, device: torch.device, dtype: torch.dtype) -> tuple[str, Callable]:
    """The decode-attention implementation for `backend` ("auto" picks the fastest that works here)."""
    cpp_possible = device.type == "cpu" and dtype == torch.float32
    if backend == "cpp" and not cpp_possible:
        raise ValueError("attention_backend 'cpp' runs float32 on the CPU only")
    if backend in ("cpp", "auto") and cpp_possible:
        if load_decode_kernel() is not None:
            return "cpp", cpp_decode_attention
        if backend == "cpp":
            raise RuntimeError("attention_backend 'cpp' was asked for but the C++ kernel could not be built")
    return "torch", torch_decode_attention


__all__ = [
    "PAGED_ATTENTION",
    "AttentionMetadata",
    "PrefillChunk",
    "paged_attention",
    "paged_attention_forward",
    "select_decode_attention",
]
