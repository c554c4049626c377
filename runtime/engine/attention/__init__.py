"""Attention backends over the paged KV cache; for transformers' models, registered with its
attention-function registry by name."""

from __future__ import annotations

import logging
import os

import torch

from .cpu_kernels import CPP_BACKEND, load_decode_kernel
from .layer import paged_attention, paged_attention_forward
from .metadata import AttentionBackend, AttentionMetadata, PrefillChunk
from .torch_backend import TORCH_BACKEND

logger = logging.getLogger(__name__)

# The name transformers' models are loaded with (`attn_implementation=...`).
PAGED_ATTENTION = "kserve_paged"


def register_paged_attention() -> str:
    """Registers our paged attention with transformers (again is harmless) and returns the name
    to load a model with. Called by the transformers load path only: importing transformers
    costs the natively read checkpoints more than a second of start-up."""
    from transformers import AttentionInterface

    AttentionInterface.register(PAGED_ATTENTION, paged_attention_forward)
    return PAGED_ATTENTION


def select_attention_backend(name: str, device: torch.device, dtype: torch.dtype) -> AttentionBackend:
    """The attention implementation for `name`. "auto" picks the fastest that works here:
    triton on CUDA (when triton imports), the C++ kernel for float32 on the CPU, else torch."""
    if name == "triton" or (name == "auto" and device.type == "cuda"):
        backend = _triton_backend(device, required=name == "triton")
        if backend is not None:
            return backend
    cpp_possible = device.type == "cpu" and dtype == torch.float32
    if name == "cpp" and not cpp_possible:
        raise ValueError("attention_backend 'cpp' runs float32 on the CPU only")
    if name in ("cpp", "auto") and cpp_possible:
        if load_decode_kernel() is not None:
            return CPP_BACKEND
        if name == "cpp":
            raise RuntimeError("attention_backend 'cpp' was asked for but the C++ kernel could not be built")
    return TORCH_BACKEND


def _triton_backend(device: torch.device, required: bool) -> AttentionBackend | None:
    # On the CPU, Triton kernels only run in its interpreter: far too slow to serve, but it
    # lets the engine's Triton path be tested end to end without a GPU.
    interpreted = device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not interpreted:
        raise ValueError(
            "attention_backend 'triton' needs a CUDA device (on the CPU only under TRITON_INTERPRET=1, for tests)"
        )
    try:
        from .triton_backend import TRITON_BACKEND, interpreter_active
    except ImportError as exc:
        if required:
            raise RuntimeError(f"attention_backend 'triton' was asked for but triton does not import: {exc}") from exc
        logger.warning("triton does not import (%s); using the torch attention backend", exc)
        return None
    if interpreted and not interpreter_active():
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton was imported in this process; "
            "set it before the first import to run the Triton backend on the CPU"
        )
    return TRITON_BACKEND


__all__ = [
    "PAGED_ATTENTION",
    "AttentionBackend",
    "AttentionMetadata",
    "PrefillChunk",
    "paged_attention",
    "paged_attention_forward",
    "register_paged_attention",
    "select_attention_backend",
]
