"""GGUF files as checkpoints: a `.gguf` file, or a directory that holds exactly one, is dequantized
once into a Hugging Face checkpoint directory (float32 safetensors, config, tokenizer), cached under
the file's sha256; the engine and the tokenizer then load that directory like any other.

torch, transformers' model classes and gguf are imported only to check and convert a file: finding
a converted one (all the transformer needs, for its tokenizer) stays light."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.cache import build_atomically, cache_root

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
# Bump when the conversion changes, so stale conversions are not reused.
FORMAT_VERSION = 1
CONVERTED_FILES = ("config.json", "tokenizer.json")
# Read from the file by the conversion, and so needed for it (transformers asks for accelerate too).
CONVERSION_PACKAGES = ("gguf", "accelerate")
INSTALL_HINT = "pip install 'kserve-llm-runtime[gguf]'"
HASH_CHUNK_BYTES = 1 << 20
# Keys of transformers' GGUF mapping that are metadata sections, not architectures.
NOT_ARCHITECTURES = ("general", "tokenizer")


class GGUFCheckpointError(RuntimeError):
    """The GGUF file cannot be served: unreadable, or of an architecture or a quantization type
    that cannot be converted."""


def find_gguf_file(path: str | Path) -> Path | None:
    """The GGUF file `path` names: the file itself, or the one in a directory that has no
    config.json; None when `path` is no GGUF input (the checkpoint loader judges it then)."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix == GGUF_SUFFIX else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    files = sorted(path.glob(f"*{GGUF_SUFFIX}"))
    if len(files) > 1:
        names = ", ".join(file.name for file in files)
        raise GGUFCheckpointError(f"{path} holds {len(files)} GGUF files ({names}): name one of them")
    return files[0] if files else None


def hf_checkpoint_dir(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """`path` itself unless it is a GGUF input; for a GGUF file, its converted checkpoint directory
    in the cache (--cache_dir, $KSERVE_LLM_CACHE or ~/.cache/kserve-llm-runtime), converted first
    when it is not there yet."""
    gguf_file = find_gguf_file(path)
    if gguf_file is None:
        return Path(path)
    return converted_checkpoint(gguf_file, cache_dir)


def converted_checkpoint(gguf_file: Path, cache_dir: str | Path | None = None) -> Path:
    started = time.perf_counter()
    digest = file_sha256(gguf_file)
    target = cache_root(cache_dir) / "gguf" / f"{digest}-v{FORMAT_VERSION}"
    if _is_complete(target):
        logger.info("Using %s, converted earlier from %s (sha256 checked in %.1f s)",
                    target, gguf_file, time.perf_counter() - started)
        return target
    logger.info("Converting %s (sha256 %s) into %s: dequantizing to float32, once",
                gguf_file, digest, target)
    build_atomically(target, lambda staging: _convert(gguf_file, staging), _is_complete)
    logger.info("Converted %s in %.1f s; later starts load %s directly",
                gguf_file.name, time.perf_counter() - started, target)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in CONVERTED_FILES) and any(directory.glob("*.safetensors"))


def _convert(gguf_file: Path, directory: Path) -> None:
    _check_convertible(gguf_file)
    tokenizer, model = _load_dequantized(gguf_file)
    logger.info("Saving %d parameters as float32 safetensors, with config and tokenizer", model.num_parameters())
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _check_convertible(gguf_file: Path) -> None:
    """Refuse, before any work, a file that is unreadable or that transformers cannot convert."""
    missing = [name for name in CONVERSION_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise GGUFCheckpointError(f"reading {gguf_file} needs the {' and '.join(missing)} packages: {INSTALL_HINT}")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(gguf_file)
        architecture = reader.fields["general.architecture"].contents()
    except (ValueError, KeyError, IndexError, TypeError, OSError) as exc:
        raise GGUFCheckpointError(f"{gguf_file} is not a readable GGUF file (corrupt or truncated?): {exc}") from None
    _check_architecture(gguf_file, architecture)
    _check_quantization_types(gguf_file, {tensor.tensor_type for tensor in reader.tensors})


def _check_architecture(gguf_file: Path, architecture: str) -> None:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - set(NOT_ARCHITECTURES))
    # The file spells some architectures without the underscore transformers uses (qwen2moe).
    if architecture not in supported and architecture.replace("moe", "_moe") not in supported:
        raise GGUFCheckpointError(
            f"{gguf_file} is a {architecture!r} model, which transformers cannot build from GGUF; "
            f"the architectures it can: {', '.join(supported)}"
        )


def _check_quantization_types(gguf_file: Path, tensor_types: set[GGMLQuantizationType]) -> None:
    import numpy as np
    from gguf import GGML_QUANT_SIZES, dequantize

    unsupported = []
    for tensor_type in tensor_types:
        _, bytes_per_block = GGML_QUANT_SIZES[tensor_type]
        try:
            # One block of zeros: the cheapest question whether gguf can dequantize the type.
            dequantize(np.zeros(bytes_per_block, dtype=np.uint8), tensor_type)
        except NotImplementedError:
            unsupported.append(tensor_type.name)
    if unsupported:
        raise GGUFCheckpointError(
            f"{gguf_file} holds tensors quantized as {', '.join(sorted(unsupported))}, which cannot be "
            "dequantized; convert the model with another quantization type (for example Q4_K_M or Q8_0)"
        )


def _load_dequantized(gguf_file: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source = dict(pretrained_model_name_or_path=gguf_file.parent, gguf_file=gguf_file.name, local_files_only=True)
    try:
        logger.info("Reading the tokenizer of %s", gguf_file.name)
        tokenizer = AutoTokenizer.from_pretrained(**source)
        logger.info("Building the model of %s and dequantizing its weights", gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(
            **source, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
    except (ValueError, KeyError, NotImplementedError, OSError) as exc:
        raise GGUFCheckpointError(f"transformers cannot build a model from {gguf_file}: {exc}") from None
    _forget_quantization(model)
    return tokenizer, model


def _forget_quantization(model: PreTrainedModel) -> None:
    """The dequantized model is a plain float32 model: saved as one, and loaded back as one
    (a quantization_config in config.json would send the loader back to GGUF)."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
