"""Keeps Triton out of a predictor that will not run on CUDA.

transformers' model code imports torch._dynamo, which imports triton whenever it is installed
(torch.utils._triton.has_triton_package); on a CPU-only machine Triton's nanobind bindings then
print about 30 "leaked instance" lines at every exit. Triton only serves the GPU path (and its
interpreter in tests, TRITON_INTERPRET=1), so the predictor makes it unimportable before its
first import of the engine, exactly as on the CPU image, where it is not installed at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

# EngineConfig.device's default; the engine cannot be imported to read it (that import is what
# pulls triton in). tests/runtime/test_triton_imports.py keeps the two equal.
DEFAULT_DEVICE = "auto"


def requested_device(argv: Sequence[str]) -> str:
    """The predictor's --device in `argv` (its own flags and KServe's, all else ignored)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--device", default=DEFAULT_DEVICE)
    return parser.parse_known_args(list(argv))[0].device


def keep_triton_out_unless_cuda(argv: Sequence[str]) -> bool:
    """Make `import triton` raise ImportError in this process unless the predictor's device (from
    `argv`) is CUDA or Triton's interpreter is on; True if it did. Call it before anything
    imports transformers' models: torch caches whether triton imports at its first try."""
    device = requested_device(argv)
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return False
    if os.environ.get("TRITON_INTERPRET") == "1" or "triton" in sys.modules:
        return False
    # The import system's own marker for "this module cannot be imported": `import triton` and
    # importlib.util.find_spec("triton") then answer as if it were not installed.
    sys.modules["triton"] = None
    return True
