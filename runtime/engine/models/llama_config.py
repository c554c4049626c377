"""A llama-family config.json (llama, mistral, qwen2, qwen3) read without transformers, whose
import costs more than a second of the predictor's start-up. Field defaults are those of
transformers' config classes for each model type; a config asking for something the native
path does not compute raises NotNative, and the checkpoint loads through transformers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .rotary import NATIVE_ROPE_TYPES

ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh")
DEFAULT_ROPE_THETA = 10000.0
# Per model type, transformers' defaults where they differ (None: derived from other fields).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"num_key_value_heads": None, "head_dim": None, "max_position_embeddings": 2048},
    "mistral": {"num_key_value_heads": 8, "head_dim": None, "max_position_embeddings": 4096 * 32},
    "qwen2": {"num_key_value_heads": 32, "head_dim": None, "max_position_embeddings": 32768},
    "qwen3": {"num_key_value_heads": 32, "head_dim": 128, "max_position_embeddings": 32768},
}
# Fields that ask for code, weights or maths the native path does not have.
_UNSUPPORTED_FIELDS = ("auto_map", "quantization_config", "partial_rotary_factor")


class NotNative(ValueError):
    """The config needs something only transformers' model classes compute."""


@dataclass(slots=True, frozen=True)
class LlamaFamilyConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str
    max_position_embeddings: int
    tie_word_embeddings: bool
    # The bias of q, k and v; and of o_proj, and of the MLP's projections.
    qkv_bias: bool
    o_proj_bias: bool
    mlp_bias: bool
    has_head_norms: bool
    rope: Mapping[str, Any]
    # Each layer's attention window (None: full attention).
    sliding_windows: tuple[int | None, ...]
    eos_token_id: int | list[int] | None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LlamaFamilyConfig:
        """Raises NotNative for a config to load through transformers, ValueError for a broken one."""
        model_type = raw.get("model_type")
        if model_type not in _DEFAULTS:
            raise NotNative(f"model type {model_type!r} is not one of {', '.join(_DEFAULTS)}")
        unsupported = [name for name in _UNSUPPORTED_FIELDS if raw.get(name) is not None]
        if unsupported:
            raise NotNative(f"config.json sets {', '.join(unsupported)}")
        defaults = _DEFAULTS[model_type]

        def given(name: str) -> Any:
            """config.json's value where it sets the field (null included), else transformers' default."""
            return raw[name] if name in raw else defaults[name]

        try:
            hidden_size, num_heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
            num_layers = int(raw["num_hidden_layers"])
            max_positions = int(given("max_position_embeddings"))
            config = cls(
                model_type=model_type,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden_size,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=num_layers,
                num_attention_heads=num_heads,
                num_key_value_heads=int(given("num_key_value_heads") or num_heads),
                head_dim=int(given("head_dim") or hidden_size // num_heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                hidden_act=raw.get("hidden_act", "silu"),
                max_position_embeddings=max_positions,
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                qkv_bias=model_type == "qwen2" or (model_type != "mistral" and bool(raw.get("attention_bias"))),
                o_proj_bias=model_type in ("llama", "qwen3") and bool(raw.get("attention_bias")),
                mlp_bias=model_type == "llama" and bool(raw.get("mlp_bias")),
                has_head_norms=model_type == "qwen3",
                rope=_rope_parameters(raw, max_positions),
                sliding_windows=_sliding_windows(raw, model_type, num_layers),
                eos_token_id=raw.get("eos_token_id"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"config.json lacks or mistypes {exc}") from None
        if config.hidden_act not in ACTIVATIONS:
            raise NotNative(f"activation {config.hidden_act!r}")
        return config


def _rope_parameters(raw: Mapping[str, Any], max_positions: int) -> dict[str, Any]:
    """transformers' standardised RoPE parameters: `rope_parameters`, or the older
    `rope_scaling` with a top-level `rope_theta`."""
    rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    if any(isinstance(value, Mapping) for value in rope.values()):
        raise NotNative("RoPE parameters per layer type")
    rope["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
    rope.setdefault("rope_theta", raw.get("rope_theta", DEFAULT_ROPE_THETA))
    if rope["rope_type"] not in NATIVE_ROPE_TYPES:
        raise NotNative(f"RoPE type {rope['rope_type']!r}")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise NotNative("partial rotary embeddings")
    if rope["rope_type"] in ("llama3", "yarn"):
        rope.setdefault("original_max_position_embeddings", max_positions)
    if rope["rope_type"] == "yarn" and rope.get("factor") is None:
        rope["factor"] = max_positions / rope["original_max_position_embeddings"]
    return rope


def _sliding_windows(raw: Mapping[str, Any], model_type: str, num_layers: int) -> tuple[int | None, ...]:
    """Mistral: every layer, its config's window (transformers' default 4096 when unset). Qwen2
    and Qwen3: the layers that `layer_types` names sliding, which by default are those from
    `max_window_layers` on when `use_sliding_window` is set."""
    window = raw.get("sliding_window", 4096)
    if model_type == "mistral":
        return (window,) * num_layers
    if model_type not in ("qwen2", "qwen3"):
        return (None,) * num_layers
    if not raw.get("use_sliding_window", False):
        window = None
    layer_types = raw.get("layer_types") or [
        "sliding_attention" if window is not None and index >= raw.get("max_window_layers", 28) else "full_attention"
        for index in range(num_layers)
    ]
    return tuple(window if layer_type == "sliding_attention" else None for layer_type in layer_types)
