"""Building and loading the engine's C++ CPU kernels: compiled with torch's cpp_extension on first
use (ninja; torch caches the build), for the instruction sets torch detected on this CPU.

Every such kernel is an optimisation only: KSERVE_LLM_CPU_KERNELS=0 turns them all off, and where
one cannot be built (no compiler, no ninja, a read-only cache) the engine logs why and runs torch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

CPU_KERNELS_ENV = "KSERVE_LLM_CPU_KERNELS"
# Named in the extension, so a cached build is never loaded on a CPU that lacks them.
ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma"], "AVX2": ["-mavx2", "-mfma"]}


def load_cpu_extension(name: str, source: Path, purpose: str) -> ModuleType | None:
    """The extension `name` built from `source` (which defines its own PYBIND11_MODULE), or None
    if CPU kernels are off or it cannot be built here. `purpose` names it in the log."""
    if os.environ.get(CPU_KERNELS_ENV, "1") == "0":
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    isa = next((isa for isa in ISA_FLAGS if capability.startswith(isa)), "DEFAULT")
    try:
        from torch.utils.cpp_extension import load_inline

        logger.info("loading the C++ CPU %s kernel (%s); the first build takes about a minute", purpose, isa)
        # Inline source: torch writes it into its own build folder, so every checkout of the
        # project shares one cached build instead of rebuilding when the path differs.
        return load_inline(
            name=f"{name}_{isa.lower()}",
            cpp_sources=[source.read_text()],
            extra_cflags=["-O3", "-ffast-math", "-fopenmp", *ISA_FLAGS.get(isa, [])],
            extra_ldflags=["-fopenmp", "-lm"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, read-only cache, ...
        logger.warning("C++ CPU %s kernel unavailable (%s); using torch", purpose, exc)
        return None
