"""Building and loading the engine's C++ CPU kernels: compiled with torch's cpp_extension on first
use (ninja; torch caches the build), for the instruction sets torch detected on this CPU, or
loaded as built in advance (an image compiles them at build time: runtime/engine/build_cpu_kernels.py)
from the directory KSERVE_LLM_CPU_KERNELS_DIR names, where no compiler is needed.

Every such kernel is an optimisation only: KSERVE_LLM_CPU_KERNELS=0 turns them all off, and where
one cannot be built (no compiler, no ninja, a read-only cache) the engine logs why and runs torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
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
BUILD_CFLAGS = ["-O3", "-ffast-math", "-fopenmp"]
BUILD_LDFLAGS = ["-fopenmp", "-lm"]
BUILT_KERNELS_CACHE_ENV = "KSERVE_LLM_CPU_KERNELS_CACHE"
# Bump when build_cpu_extension's flags or the loading convention change in a way the key misses.
BUILD_RECIPE_VERSION = "1"


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
    module_name = extension_name(name, isa)
    prebuilt = _load_prebuilt(module_name, purpose)
    if prebuilt is not None:
        return prebuilt
    cache = built_kernel_directory(module_name, source.read_text(), isa)
    cached = _load_cached(cache) if cache is not None else None
    if cached is not None:
        return cached
    try:
        logger.info("loading the C++ CPU %s kernel (%s); the first build takes about a minute", purpose, isa)
        module = build_cpu_extension(name, source, isa)
    except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, read-only cache, ...
        logger.warning("C++ CPU %s kernel unavailable (%s); using torch", purpose, exc)
        return None
    if cache is not None:
        _keep_built_kernel(module, cache)
    return module


def built_kernel_directory(module_name: str, source_text: str, isa: str) -> Path | None:
    """The directory where this process keeps or finds kernel `module_name` built from `source_text`
    for `isa`, or None when the cache is off (KSERVE_LLM_CPU_KERNELS_CACHE set empty). Its name is
    a digest of all the build depends on, so a changed source, torch, Python or flag set misses."""
    root = os.environ.get(BUILT_KERNELS_CACHE_ENV)
    if root is None:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kserve-llm" / "cpu-kernels")
    if not root:
        return None
    recipe = "\0".join((
        BUILD_RECIPE_VERSION, module_name, isa, source_text, torch.__version__, sys.version,
        " ".join(BUILD_CFLAGS), " ".join(ISA_FLAGS.get(isa, [])), " ".join(BUILD_LDFLAGS),
    ))
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:24]
    return Path(root) / f"{module_name}-{digest}"


def _load_cached(directory: Path) -> ModuleType | None:
    """The kernel kept in `directory`, or None (none there, or it does not load: then it is built
    again). The file is named after the module it defines: torch names a rebuild of a kernel
    whose sources or flags changed `<name>_v1`, and so on."""
    for path in directory.glob("*.so"):
        try:
            return _import_extension(path.stem, path)
        except ImportError as exc:
            logger.warning("cached C++ CPU kernel at %s does not load (%s); building it", path, exc)
    return None


def _keep_built_kernel(module: ModuleType, directory: Path) -> None:
    """Copy a kernel torch just built (or took from its cache) into our cache, atomically, so a
    concurrent start never loads half a file. Failing to is only a slower next start."""
    built = Path(module.__file__)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f"{module.__name__}.so.{os.getpid()}.partial"
        shutil.copy2(built, partial)
        os.replace(partial, directory / f"{module.__name__}.so")
    except OSError as exc:  # a read-only home, a full disk
        logger.debug("not caching the built kernel %s in %s: %s", built, directory, exc)


def build_cpu_extension(name: str, source: Path, isa: str, build_directory: Path | None = None) -> ModuleType:
    """Compile (or take from torch's cache, or from `build_directory`'s earlier build) and import
    kernel `name` for `isa`; raises if it cannot be built."""
    from torch.utils.cpp_extension import load_inline

    # Inline source: torch writes it into its own build folder, so every checkout of the
    # project shares one cached build instead of rebuilding when the path differs.
    return load_inline(
        name=extension_name(name, isa),
        cpp_sources=[source.read_text()],
        extra_cflags=[*BUILD_CFLAGS, *ISA_FLAGS.get(isa, [])],
        extra_ldflags=BUILD_LDFLAGS,
        build_directory=None if build_directory is None else str(build_directory),
        verbose=False,
    )


def build_prebuilt_kernel(name: str, source: Path, isa: str, directory: Path) -> Path:
    """Build kernel `name` for `isa` and copy it into `directory` as the loader looks for it there.

    In torch's shared cache, a kernel built before from other sources or flags (another checkout)
    makes torch build this one as `<name>_v1`, a module the loader, which imports `<name>`,
    cannot load: then it is built again in a folder of its own."""
    module_name = extension_name(name, isa)
    module = build_cpu_extension(name, source, isa)
    directory.mkdir(parents=True, exist_ok=True)
    if module.__name__ != module_name:
        with tempfile.TemporaryDirectory() as build_directory:
            module = build_cpu_extension(name, source, isa, Path(build_directory))
            return Path(shutil.copy2(module.__file__, directory / f"{module_name}.so"))
    return Path(shutil.copy2(module.__file__, directory / f"{module_name}.so"))


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
        module = _import_extension(module_name, path)
    except ImportError as exc:  # a library it links (libgomp) missing, a different torch, ...
        logger.warning("prebuilt C++ CPU %s kernel at %s does not load (%s); building it", purpose, path, exc)
        return None
    logger.info("loaded the prebuilt C++ CPU %s kernel %s", purpose, path)
    return module


def _import_extension(module_name: str, path: Path) -> ModuleType:
    """The built extension at `path`; ImportError where it does not load. What torch's own loader
    does with a built extension: the module name must be the one it was built under (PyInit_<name>)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
