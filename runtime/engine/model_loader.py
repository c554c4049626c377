"""Load a Hugging Face decoder checkpoint directory for the engine.

The llama family (llama, mistral, qwen2, qwen3) is read natively (models/llama_checkpoint.py)
into the weights of our own forward, without importing transformers: its model code took most
of the predictor's start-up. Every other architecture, and llama-family configs that ask for
what the native reader does not compute (models/llama_config.py, NotNative), load as
transformers models on our paged attention, transformers imported only then.

Safe by default: only safetensors weights, no remote code, nothing downloaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .attention import register_paged_attention
from .config import ConfigError, EngineConfig
from .cpu_linear import use_fast_cpu_layers
from .models import LlamaFamilyForward, ModelWeights
from .models.llama_checkpoint import CheckpointError, load_llama_family
from .models.llama_config import LlamaFamilyConfig, NotNative

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be loaded as asked (missing, unsafe, or unsupported)."""


@dataclass(slots=True)
class LoadedModel:
    # The transformers model; None where the native reader loaded the checkpoint.
    model: torch.nn.Module | None
    # The weights of our own forward (LlamaFamilyForward), where it computes this model.
    weights: ModelWeights | None
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_position_embeddings: int | None
    num_layers: int
    num_kv_heads: int
    head_dim: int


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Reduced precision matmuls are slow on most CPUs; float32 is the fast path there.
    return torch.float32


def load_model(config: EngineConfig) -> LoadedModel:
    path = Path(config.model)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    has_safetensors = _check_weight_files(path, config.allow_pickle_weights)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    raw_config = _read_config_json(path, config.trust_remote_code)
    native_config = _native_config(path, raw_config) if has_safetensors else None
    if native_config is not None:
        return _load_native(path, native_config, device, dtype)
    return _load_with_transformers(path, config, device, dtype)


def _native_config(path: Path, raw_config: dict[str, Any]) -> LlamaFamilyConfig | None:
    """The config for the native reader, or None where transformers is to load the checkpoint."""
    try:
        return LlamaFamilyConfig.from_dict(raw_config)
    except NotNative as exc:
        logger.debug("%s loads through transformers: %s", path, exc)
        return None
    except ValueError as exc:
        raise ModelLoadError(f"{path}/config.json is not a valid {raw_config.get('model_type')} config: {exc}") from exc


def _load_native(path: Path, config: LlamaFamilyConfig, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    logger.info("loading %s (%s, read natively) as %s on %s", path, config.model_type, dtype, device)
    try:
        weights = load_llama_family(path, config, dtype, device)
    except (CheckpointError, OSError) as exc:
        raise ModelLoadError(f"{path} does not load as a {config.model_type} checkpoint: {exc}") from exc
    return LoadedModel(
        model=None,
        weights=weights,
        device=device,
        dtype=dtype,
        vocab_size=weights.lm_head.weight.shape[0],
        eos_token_ids=_eos_token_ids(path, config.eos_token_id),
        max_position_embeddings=config.max_position_embeddings,
        num_layers=config.num_hidden_layers,
        num_kv_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
    )


def _load_with_transformers(path: Path, config: EngineConfig, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    # Imported here: only this path needs transformers' model classes (seconds of imports).
    from transformers import AutoModelForCausalLM

    hf_config = _load_config(path, config.trust_remote_code)
    _check_supported(hf_config, str(path))
    logger.info("loading %s (%s) as %s on %s", path, _architecture(hf_config), dtype, device)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        config=hf_config,
        dtype=dtype,
        attn_implementation=register_paged_attention(),
        # None lets transformers fall back to pickle files; True refuses them.
        use_safetensors=None if config.allow_pickle_weights else True,
        trust_remote_code=config.trust_remote_code,
        local_files_only=True,
    )
    model.to(device)
    return _describe(model, device, dtype, _eos_token_ids(path, hf_config.get_text_config().eos_token_id))


def adopt_model(model: PreTrainedModel, config: EngineConfig) -> LoadedModel:
    """An already-built transformers causal LM (weights set, on its device) as the engine's
    model, instead of loading `config.model` (which then only names it in logs). For
    benchmarks and embedding. The model is adapted in place, as a loaded one is: switched
    to the paged attention, and on the CPU given the faster LM head."""
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    if config.device != "auto" and resolve_device(config.device).type != device.type:
        raise ConfigError(f"device is {config.device!r} but the model is on {device}")
    if config.dtype != "auto" and DTYPES[config.dtype] != dtype:
        raise ConfigError(f"dtype is {config.dtype!r} but the model's weights are {dtype}")
    _check_supported(model.config, config.model)
    model.set_attn_implementation(register_paged_attention())
    generation_config = getattr(model, "generation_config", None)
    eos = generation_config.eos_token_id if generation_config is not None else None
    if eos is None:
        eos = model.config.get_text_config().eos_token_id
    return _describe(model, device, dtype, _as_token_ids(eos))


def _check_supported(hf_config: PretrainedConfig, name: str) -> None:
    if getattr(hf_config.get_text_config(), "attn_logit_softcapping", None):
        raise ModelLoadError(
            f"{name} uses attention logit softcapping (Gemma 2 style), which the paged attention "
            "backends do not implement yet"
        )


def _describe(
    model: PreTrainedModel, device: torch.device, dtype: torch.dtype, eos_token_ids: tuple[int, ...]
) -> LoadedModel:
    model.eval()
    model.requires_grad_(False)
    if device.type == "cpu":
        use_fast_cpu_layers(model)
    text_config = model.config.get_text_config()
    num_heads = text_config.num_attention_heads
    return LoadedModel(
        model=model,
        weights=LlamaFamilyForward.weights_from_transformers(model) if LlamaFamilyForward.supports(model) else None,
        device=device,
        dtype=dtype,
        vocab_size=model.get_output_embeddings().weight.shape[0],
        eos_token_ids=eos_token_ids,
        max_position_embeddings=_max_positions(text_config),
        num_layers=text_config.num_hidden_layers,
        num_kv_heads=getattr(text_config, "num_key_value_heads", None) or num_heads,
        head_dim=getattr(text_config, "head_dim", None) or text_config.hidden_size // num_heads,
    )


def _check_weight_files(path: Path, allow_pickle: bool) -> bool:
    """Whether the checkpoint has safetensors weights; raises where it has none it may load."""
    if any(path.glob("*.safetensors")):
        return True
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES)
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{path} has only pickle weights ({', '.join(pickles)}), which can run code when loaded; "
            "convert them to safetensors, or allow them explicitly (allow_pickle_weights / --allow_pickle_weights)"
        )
    if not pickles:
        raise ModelLoadError(f"{path} has no weight files (*.safetensors)")
    return False


def _read_config_json(path: Path, trust_remote_code: bool) -> dict[str, Any]:
    raw = json.loads((path / "config.json").read_text())
    if "auto_map" in raw and not trust_remote_code:
        raise ModelLoadError(
            f"{path} needs custom code from the checkpoint (auto_map in config.json); "
            "it is refused unless trust_remote_code is enabled (--trust_remote_code)"
        )
    return raw


def _load_config(path: Path, trust_remote_code: bool) -> PretrainedConfig:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"transformers cannot build a model from {path}/config.json: {exc}") from exc


def _architecture(hf_config: PretrainedConfig) -> str:
    return ",".join(hf_config.architectures or [hf_config.model_type])


def _eos_token_ids(path: Path, config_eos: int | list[int] | None) -> tuple[int, ...]:
    """generation_config.json's end-of-sequence ids (what transformers' generate stops at), else config.json's."""
    eos = None
    generation_config = path / "generation_config.json"
    if generation_config.is_file():
        eos = json.loads(generation_config.read_text()).get("eos_token_id")
    return _as_token_ids(config_eos if eos is None else eos)


def _as_token_ids(eos: int | list[int] | None) -> tuple[int, ...]:
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def _max_positions(text_config: PretrainedConfig) -> int | None:
    for name in ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
