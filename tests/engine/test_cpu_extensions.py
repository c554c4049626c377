"""C++ CPU kernels built in advance (as the CPU image does) load from KSERVE_LLM_CPU_KERNELS_DIR
where no compiler is; without one there, the engine builds as before."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

from runtime.engine.build_cpu_kernels import CPU_KERNELS, build_all
from runtime.engine.cpu_extensions import (
    BUILT_KERNELS_CACHE_ENV,
    PREBUILT_KERNELS_DIR_ENV,
    built_kernel_directory,
    detected_isa,
    extension_name,
    load_cpu_extension,
)
from runtime.engine.grammar import (
    BITMASK_KERNEL_NAME,
    BITMASK_KERNEL_SOURCE,
    load_bitmask_kernel,
)
from tests.servers import REPO_ROOT

needs_toolchain = pytest.mark.skipif(load_bitmask_kernel() is None, reason="no C++ toolchain to build the kernels")


def no_compiler(*args, **kwargs):
    raise RuntimeError("no compiler here")


@pytest.fixture
def without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KSERVE_LLM_CPU_KERNELS", raising=False)
    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", no_compiler)


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This CPU's kernels, built (from torch's cache when it has them) into a directory of their own."""
    directory = tmp_path_factory.mktemp("cpu-kernels")
    build_all(directory, isas=[detected_isa()])
    return directory


@needs_toolchain
def test_the_builder_writes_every_kernel_under_the_name_the_loader_looks_for(prebuilt: Path) -> None:
    expected = {f"{extension_name(name, detected_isa())}.so" for name, _ in CPU_KERNELS}
    assert {path.name for path in prebuilt.iterdir()} == expected


# In a fresh process, as a pod starts (in this one, torch's cached build of the same name is already
# loaded, and the dynamic loader would hand that back): no compiler, each kernel from the directory,
# and the grammar mask kernel computing what the torch path does.
LOAD_WITHOUT_A_COMPILER = """
import json, torch, torch.utils.cpp_extension
def no_compiler(*args, **kwargs):
    raise RuntimeError("no compiler here")
torch.utils.cpp_extension.load_inline = no_compiler
from runtime.engine.build_cpu_kernels import CPU_KERNELS
from runtime.engine.cpu_extensions import load_cpu_extension
from runtime.engine.grammar import torch_apply_grammar_bitmask
modules = {name: load_cpu_extension(name, source, name) for name, source in CPU_KERNELS}
logits = torch.randn(3, 100)
bitmask = torch.tensor([[-1, -1, -1, 15], [0, 0, 0, 0], [5, 0, -1, 1]], dtype=torch.int32)
expected = logits.clone()
torch_apply_grammar_bitmask(expected, [0, 1, 2], bitmask)
modules["kserve_llm_cpu_token_bitmask"].apply_token_bitmask(logits, bitmask, [0, 1, 2])
print(json.dumps({"files": {name: module and module.__file__ for name, module in modules.items()},
                  "same_logits": torch.equal(logits, expected)}))
"""


@needs_toolchain
def test_a_prebuilt_kernel_loads_without_a_compiler(prebuilt: Path) -> None:
    env = {**os.environ, PREBUILT_KERNELS_DIR_ENV: str(prebuilt)}
    env.pop("KSERVE_LLM_CPU_KERNELS", None)
    result = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_A_COMPILER], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["files"] == {name: str(prebuilt / f"{extension_name(name, detected_isa())}.so")
                               for name, _ in CPU_KERNELS}
    assert loaded["same_logits"]


def test_without_a_prebuilt_kernel_it_builds_as_before(tmp_path: Path, without_a_compiler, monkeypatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(PREBUILT_KERNELS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(BUILT_KERNELS_CACHE_ENV, str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="runtime.engine.cpu_extensions"):
        assert load_cpu_extension(BITMASK_KERNEL_NAME, BITMASK_KERNEL_SOURCE, "grammar mask") is None
    assert "no prebuilt C++ CPU grammar mask kernel" in caplog.text
    assert "no compiler here" in caplog.text


# A kernel once built is kept in our own cache and loaded from there by later processes, without
# torch's build machinery (which costs about 0.1 s per start even when torch has the build).
LOAD_FROM_THE_CACHE = """
import json, sys
from runtime.engine.grammar import BITMASK_KERNEL_NAME, BITMASK_KERNEL_SOURCE
from runtime.engine.cpu_extensions import load_cpu_extension
module = load_cpu_extension(BITMASK_KERNEL_NAME, BITMASK_KERNEL_SOURCE, "grammar mask")
print(json.dumps({"file": module and module.__file__,
                  "imported_the_build_machinery": "torch.utils.cpp_extension" in sys.modules}))
"""


@needs_toolchain
def test_a_built_kernel_is_kept_and_later_starts_load_it_without_torch_build_machinery(tmp_path: Path) -> None:
    env = {**os.environ, BUILT_KERNELS_CACHE_ENV: str(tmp_path)}
    for variable in ("KSERVE_LLM_CPU_KERNELS", PREBUILT_KERNELS_DIR_ENV):
        env.pop(variable, None)
    # The first start builds (here: takes torch's cached build) and keeps a copy.
    first = subprocess.run([sys.executable, "-c", "from runtime.engine.grammar import load_bitmask_kernel;"
                            "assert load_bitmask_kernel() is not None"], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = list(tmp_path.glob("*/*.so"))
    assert len(kept) == 1
    # The next one loads that copy without importing torch's build machinery (so nothing was built).
    result = subprocess.run([sys.executable, "-c", LOAD_FROM_THE_CACHE], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"file": str(kept[0]), "imported_the_build_machinery": False}


def test_the_cache_key_changes_with_what_the_build_depends_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(BUILT_KERNELS_CACHE_ENV, str(tmp_path))
    directory = built_kernel_directory("kernel_avx512", "int f() { return 1; }", "AVX512")
    assert directory.parent == tmp_path
    assert built_kernel_directory("kernel_avx512", "int f() { return 1; }", "AVX512") == directory
    assert built_kernel_directory("kernel_avx512", "int f() { return 2; }", "AVX512") != directory
    assert built_kernel_directory("kernel_avx2", "int f() { return 1; }", "AVX2") != directory
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert built_kernel_directory("kernel_avx512", "int f() { return 1; }", "AVX512") != directory
    monkeypatch.setenv(BUILT_KERNELS_CACHE_ENV, "")
    assert built_kernel_directory("kernel_avx512", "int f() { return 1; }", "AVX512") is None


def test_a_torn_cached_kernel_is_built_again(tmp_path: Path, without_a_compiler, monkeypatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(BUILT_KERNELS_CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(PREBUILT_KERNELS_DIR_ENV, raising=False)
    directory = built_kernel_directory(extension_name(BITMASK_KERNEL_NAME, detected_isa()),
                                       BITMASK_KERNEL_SOURCE.read_text(), detected_isa())
    directory.mkdir(parents=True)
    (directory / f"{extension_name(BITMASK_KERNEL_NAME, detected_isa())}.so").write_bytes(b"not an ELF file")
    with caplog.at_level(logging.INFO, logger="runtime.engine.cpu_extensions"):
        assert load_cpu_extension(BITMASK_KERNEL_NAME, BITMASK_KERNEL_SOURCE, "grammar mask") is None
    assert "does not load" in caplog.text and "no compiler here" in caplog.text
