"""A CPU predictor never imports Triton (which would print nanobind's leak warnings at every exit);
a CUDA one still may. Meaningful only where triton is installed, as in the test extra."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from runtime.engine import EngineConfig
from runtime.triton_imports import DEFAULT_DEVICE, requested_device

from .conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed: nothing could import it")

# Runs the predictor's entry point as `python -m runtime` would, up to its --help (all its
# module-level imports done), then reports whether that imported triton, and whether the engine
# could import it later (as it does on CUDA, lazily).
PROBE = """
import json, runpy, sys
sys.argv = ["runtime", *sys.argv[1:], "--help"]
try:
    runpy.run_module("runtime", run_name="__main__")
except SystemExit:
    pass
imported = sys.modules.get("triton") is not None
try:
    import triton
    importable = True
except ImportError:
    importable = False
print(json.dumps({"imported": imported, "importable": importable}))
"""


def imported_by_predictor(*args: str) -> dict[str, bool]:
    # The interpreter (TRITON_INTERPRET=1, tests only) lets triton in on purpose.
    env_without_interpreter = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=False, timeout=120, env=env_without_interpreter)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_predictor_on_the_cpu_does_not_import_triton() -> None:
    assert imported_by_predictor("--device", "cpu") == {"imported": False, "importable": False}


def test_the_predictor_on_cuda_may_import_triton() -> None:
    # The guard is no blanket ban: the GPU path needs Triton (the engine imports it lazily there).
    assert imported_by_predictor("--device=cuda")["importable"]


def test_the_guard_reads_the_engine_default_device() -> None:
    assert DEFAULT_DEVICE == EngineConfig.__dataclass_fields__["device"].default
    assert requested_device(["--model_name", "m", "--device=cpu"]) == "cpu"
    assert requested_device(["--model_name", "m"]) == DEFAULT_DEVICE


def test_a_cpu_predictor_stops_without_leak_warnings(launch_server) -> None:
    server = launch_server()
    assert server.stop() == 0
    noise = [line for line in server.log().splitlines() if "leaked" in line or "nanobind" in line]
    assert not noise, "\n".join(noise[:10])
