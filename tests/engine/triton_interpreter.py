"""Triton kernels in tests without a GPU: they run in Triton's CPU interpreter (TRITON_INTERPRET=1).

The variable only works if set before triton's first import in a process: Triton picks
compiled or interpreted code as each @triton.jit is applied, its own standard library
(tl.sum, tl.max, ...) included. transformers' model code imports triton (through
torch._dynamo), so under pytest the conftest usually already has: a test file then
reruns itself, once, in a fresh process with the variable set.
Import this module before triton in a test file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ON_CUDA = torch.cuda.is_available()
if not ON_CUDA and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from runtime.engine.attention.triton_backend import interpreter_active  # noqa: E402

CHILD_PROCESS_FLAG = "TRITON_INTERPRETER_TESTS_CHILD"
RERUN_IN_SUBPROCESS = not ON_CUDA and not interpreter_active() and CHILD_PROCESS_FLAG not in os.environ
needs_kernels = pytest.mark.skipif(RERUN_IN_SUBPROCESS, reason="runs in a fresh process with TRITON_INTERPRET=1")
runs_in_fresh_process = pytest.mark.skipif(not RERUN_IN_SUBPROCESS, reason="kernels run in this process")


def rerun_in_fresh_process(test_file: str, timeout: float = 240) -> None:
    """Run `test_file` in a new pytest process with the interpreter on; fail with its output."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "TRITON_INTERPRET": "1", CHILD_PROCESS_FLAG: "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
