"""`python -m runtime.engine.build_cpu_kernels DIR`: compiles every C++ CPU kernel of the engine
for every instruction set it picks between (AVX-512, AVX2, portable) into DIR, where the engine
loads them without a compiler when KSERVE_LLM_CPU_KERNELS_DIR=DIR. The CPU image runs this in its
build stage (which has g++ and ninja) and copies DIR into its slim runtime stage."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from .attention.cpu_kernels import KERNEL_NAME, SOURCE
from .cpu_extensions import ISAS, build_prebuilt_kernel
from .cpu_linear import FEW_ROWS_KERNEL_NAME, FEW_ROWS_KERNEL_SOURCE
from .grammar import BITMASK_KERNEL_NAME, BITMASK_KERNEL_SOURCE
from .models.cpu_layer_ops import LAYER_OPS_KERNEL_NAME, LAYER_OPS_KERNEL_SOURCE

logger = logging.getLogger(__name__)

# (name, source) of every C++ CPU kernel the engine loads.
CPU_KERNELS: tuple[tuple[str, Path], ...] = (
    (KERNEL_NAME, SOURCE),
    (BITMASK_KERNEL_NAME, BITMASK_KERNEL_SOURCE),
    (FEW_ROWS_KERNEL_NAME, FEW_ROWS_KERNEL_SOURCE),
    (LAYER_OPS_KERNEL_NAME, LAYER_OPS_KERNEL_SOURCE),
)


def build_all(directory: Path, isas: Sequence[str] = ISAS) -> list[Path]:
    """Every kernel for every one of `isas`, into `directory`; raises if one cannot be built (an
    image must not ship without them silently). Instruction sets the build machine lacks are
    only compiled for, never run here."""
    built = []
    for name, source in CPU_KERNELS:
        for isa in isas:
            logger.info("building %s for %s", name, isa)
            built.append(build_prebuilt_kernel(name, source, isa, directory))
    return built


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.engine.build_cpu_kernels", description=__doc__)
    parser.add_argument("directory", type=Path, help="where the built kernels go (KSERVE_LLM_CPU_KERNELS_DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in build_all(args.directory):
        print(path)


if __name__ == "__main__":
    main()
