"""Building and loading the engine's C++ CPU kernels: compiled with torch's cpp_extension on first
use (ninja; torch caches the build), for the instruction sets torch detected on this CPU, or
loaded as built in advance (an image compiles them at build time: runtime/engine/build_cpu_kernels.py)
from the directory KSERVE_LLM_CPU_KERNELS_DIR names, where no compiler is needed.

Every such kernel is an optimisation only: KSERVE_LLM_CPU_KERNELS=0 turns them all off, and where
one cannot be built (no compiler, no ninja, a read-only cache) the engine logs why and runs torch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType

import torch

from .startup import STARTUP

logger = logging.getLogger(__name__)

CPU_KERNELS_ENV = "KSERVE_LLM_CPU_KERNELS"
# A directory of kernels built in advance, one `<name>_<isa>.so` each; the images set it.
PREBUILT_KERNELS_DIR_ENV = "KSERVE_LLM_CPU_KERNELS_DIR"
# Named in the extension, so a cached build is never loaded on a CPU that lacks them.
ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma"], "AVX2": ["-mavx2", "-mfma"]}
# Every instruction set a kernel is built for: those above, and the portable build.
ISAS = (*ISA_FLAGS, "DEFAULT")


def detected_isa() -> str:
    """The best of ISAS that torch found on this CPU."""
    capability = torch.backends.cpu.get_cpu_capability()
    return next((isa for isa in ISA_FLAGS if capability.startswith(isa)), "DEFAULT")


def extension_name(name: str, isa: str) -> str:
    """The module name of kernel `name` built for `isa` (also its file's name, prebuilt)."""
    return f"{name}_{isa.lower()}"


def load_cpu_extension(name: str, source: Path, purpose: str) -> ModuleType | None:
    """The extension `name` built from `source` (which defines its own PYBIND11_MODULE), or None
    if CPU kernels are off or it cannot be built here. `purpose` names it in the log."""
    if os.environ.get(CPU_KERNELS_ENV, "1") == "0":
        return None
    with STARTUP.phase("kernels"):
        return _load_or_build(name, source, purpose)


def _load_or_build(name: str, source: Path, purpose: str) -> ModuleType | None:
    isa = detected_isa()
    prebuilt = _load_prebuilt(extension_name(name, isa), purpose)
    if prebuilt is not None:
        return prebuilt
    try:
        logger.info("loading the C++ CPU %s kernel (%s); the first build takes about a minute", purpose, isa)
        return build_cpu_extension(name, source, isa)
    except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, read-only cache, ...
        logger.warning("C++ CPU %s kernel unavailable (%s); using torch", purpose, exc)
        return None


def build_cpu_extension(name: str, source: Path, isa: str) -> ModuleType:
    """Compile (or take from torch's cache) and import kernel `name` for `isa`; raises if it
    cannot be built."""
    from torch.utils.cpp_extension import load_inline

    # Inline source: torch writes it into its own build folder, so every checkout of the
    # project shares one cached build instead of rebuilding when the path differs.
    return load_inline(
        name=extension_name(name, isa),
        cpp_sources=[source.read_text()],
        extra_cflags=["-O3", "-ffast-math", "-fopenmp", *ISA_FLAGS.get(isa, [])],
        extra_ldflags=["-fopenmp", "-lm"],
        verbose=False,
    )


def build_prebuilt_kernel(name: str, source: Path, isa: str, directory: Path) -> Path:
    """Build kernel `name` for `isa` and copy it into `directory` as the loader looks for it there."""
    module = build_cpu_extension(name, source, isa)
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(module.__file__, directory / f"{extension_name(name, isa)}.so"))


def _load_prebuilt(module_name: str, purpose: str) -> ModuleType | None:
    """The kernel from PREBUILT_KERNELS_DIR_ENV's directory, or None (not set, not there, or it
    does not load: then it is built as usual, where a compiler allows)."""
    directory = os.environ.get(PREBUILT_KERNELS_DIR_ENV)
    if not directory:
        return None
    path = Path(directory) / f"{module_name}.so"
    if not path.is_file():
        logger.warning("no prebuilt C++ CPU %s kernel at %s; building it", purpose, path)
        return None
    try:
        # What torch's own loader does with a built extension (the module name must be the one
        # it was built under: PyInit_<name>).
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as exc:  # a library it links (libgomp) missing, a different torch, ...
        logger.warning("prebuilt C++ CPU %s kernel at %s does not load (%s); building it", purpose, path, exc)
        return None
    logger.info("loaded the prebuilt C++ CPU %s kernel %s", purpose, path)
    return module
