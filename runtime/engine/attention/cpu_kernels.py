"""The C++ CPU decode-attention kernel: compiled on first use (cpu_extensions.py), else None.

Decode attention in plain torch must gather every sequence's pages into a padded copy
before attending; the kernel reads K/V in place. It is an optimisation only: when no
compiler is available the engine logs why and uses the torch backend.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch

from ..cpu_extensions import load_cpu_extension
from .metadata import AttentionBackend, AttentionMetadata
from .torch_backend import torch_prefill_attention

SOURCE = Path(__file__).parent / "csrc" / "paged_decode_attention.cpp"
KERNEL_NAME = "kserve_llm_cpu_attention"


@functools.cache
def load_decode_kernel() -> Callable | None:
    """Returns paged_decode_attention(query, key_cache, value_cache, block_tables,
    context_lens, scale, sliding_window) or None if it cannot be built here."""
    module = load_cpu_extension(KERNEL_NAME, SOURCE, "attention")
    return None if module is None else module.paged_decode_attention


def cpp_decode_attention(
    queries: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scaling: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """The decode_attention backend signature around the C++ kernel (load it first)."""
    kernel = load_decode_kernel()
    return kernel(
        queries, key_cache, value_cache, meta.decode_block_tables, meta.decode_context_lens, scaling, sliding_window or 0
    )


# The kernel covers decodes; prefills (matmul-bound, few per step) stay on torch.
CPP_BACKEND = AttentionBackend("cpp", cpp_decode_attention, torch_prefill_attention)
