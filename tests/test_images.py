"""The images' Dockerfiles against the Makefile: the same torch and Python versions (pinned in
both; a drift would test one stack and ship another), and what each image promises: the CPU image
ships the C++ kernels prebuilt where the engine looks for them, the GPU image takes CUDA torch, and
both run as a numeric non-root user. No docker here: these read the files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runtime.engine.cpu_extensions import PREBUILT_KERNELS_DIR_ENV
from tests.servers import REPO_ROOT

CPU_DOCKERFILE = REPO_ROOT / "Dockerfile"
GPU_DOCKERFILE = REPO_ROOT / "Dockerfile.gpu"
DOCKERFILES = [CPU_DOCKERFILE, GPU_DOCKERFILE]


def makefile_versions() -> dict[str, str]:
    """TORCH_VERSION and PYTHON_VERSION as the Makefile installs them (python3.X is the
    interpreter it looks for first)."""
    text = (REPO_ROOT / "Makefile").read_text()
    torch = re.search(r"^TORCH_VERSION \?= (\S+)$", text, re.MULTILINE)
    python = re.search(r"^PYTHON \?= \$\(shell command -v python(3\.\d+)", text, re.MULTILINE)
    assert torch and python, "the Makefile no longer sets TORCH_VERSION ?= / PYTHON ?= ...python3.X: update this test"
    return {"TORCH_VERSION": torch.group(1), "PYTHON_VERSION": python.group(1)}


def build_args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile.read_text(), re.MULTILINE))


def final_stage(dockerfile: Path) -> str:
    """The instructions of the stage `docker build` builds by default (the last)."""
    return re.split(r"^FROM ", dockerfile.read_text(), flags=re.MULTILINE)[-1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_images_pin_the_makefiles_torch_and_python(dockerfile: Path) -> None:
    expected, pinned = makefile_versions(), build_args(dockerfile)
    for name, version in expected.items():
        assert pinned.get(name) == version, (
            f"{dockerfile.name} has ARG {name}={pinned.get(name)} but the Makefile installs {version}: "
            f"change both together")
    text = dockerfile.read_text()
    # The pins are used, not shadowed by a literal somewhere else in the file.
    assert re.findall(r"torch==(\S+)", text) == ["${TORCH_VERSION}"], \
        f"{dockerfile.name}: torch is installed once, as torch==${{TORCH_VERSION}}"
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    python_bases = [base for base in bases if base.startswith("python:")]
    assert python_bases and all(base.startswith("python:${PYTHON_VERSION}") for base in python_bases), bases


def test_setup_cfg_names_the_makefiles_python() -> None:
    python = makefile_versions()["PYTHON_VERSION"]
    setup = (REPO_ROOT / "setup.cfg").read_text()
    assert f"python_requires = >={python}" in setup and f"Python :: {python}" in setup, \
        f"setup.cfg's python_requires / classifier differ from the Makefile's python{python}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_images_run_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = re.findall(r"^USER (\S+)$", final_stage(dockerfile), re.MULTILINE)
    assert users, f"{dockerfile.name} runs as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"{dockerfile.name}: USER {users[-1]} (runAsNonRoot needs a uid)"


def test_the_cpu_image_ships_the_kernels_where_the_engine_loads_them() -> None:
    text = CPU_DOCKERFILE.read_text()
    [built_into] = re.findall(r"python -m runtime\.engine\.build_cpu_kernels (\S+)", text)
    stage = final_stage(CPU_DOCKERFILE)
    assert f"ENV {PREBUILT_KERNELS_DIR_ENV}={built_into}" in stage
    assert re.search(rf"^COPY --from=\S+ {re.escape(built_into)} {re.escape(built_into)}$", stage, re.MULTILINE)
    # The compiler stays in the build stage.
    assert "g++" not in stage and "g++" in text


def test_the_gpu_image_takes_cuda_torch_and_checks_triton() -> None:
    text = GPU_DOCKERFILE.read_text()
    assert "--index-url https://download.pytorch.org/whl/${CUDA_INDEX} torch==${TORCH_VERSION}" in text
    assert re.match(r"cu\d+$", build_args(GPU_DOCKERFILE)["CUDA_INDEX"])
    assert "startswith('triton')" in text and "torch.version.cuda" in text
    # Triton builds its launchers with the system C compiler at run time.
    assert "gcc" in final_stage(GPU_DOCKERFILE)
