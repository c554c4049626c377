"""The C++ CPU decode-attention kernel: compiled on first use (cached by torch), else None.

Decode attention in plain torch must gather every sequence's pages into a padded copy
before attending; the kernel reads K/V in place. It is an optimisation only: when no
compiler is available the engine logs why and uses the torch backend.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from .metadata import AttentionBackend, AttentionMetadata
from .torch_backend import torch_prefill_attention

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "paged_decode_attention.cpp"
# Instruction sets are chosen from what torch detected on this CPU, and named in the
# extension, so a cached build is never loaded on a CPU that lacks them.
ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma"], "AVX2": ["-mavx2", "-mfma"]}


@functools.cache
def load_decode_kernel() -> Callable | None:
    """Returns paged_decode_attention(query, key_cache, value_cache, block_tables,
    context_lens, scale, sliding_window) or None if it cannot be built here."""
    if os.environ.get("KSERVE_LLM_CPU_KERNELS", "1") == "0":
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    isa = next((name for name in ISA_FLAGS if capability.startswith(name)), "DEFAULT")
    try:
        from torch.utils.cpp_extension import load_inline

        logger.info("loading the C++ CPU attention kernel (%s); the first build takes about a minute", isa)
        # Inline source: torch writes it into its own build folder, so every checkout of the
        # project shares one cached build instead of rebuilding when the path differs.
        module = load_inline(
            name=f"kserve_llm_cpu_attention_{isa.lower()}",
            cpp_sources=[SOURCE.read_text()],
            extra_cflags=["-O3", "-ffast-math", "-fopenmp", *ISA_FLAGS.get(isa, [])],
            extra_ldflags=["-fopenmp", "-lm"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, read-only cache, ...
        logger.warning("C++ CPU attention kernel unavailable (%s); using the torch backend", exc)
        return None
    return module.paged_decode_attention


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
