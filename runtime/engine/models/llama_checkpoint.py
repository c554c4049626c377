"""Read a llama-family checkpoint directory (config.json and *.safetensors) into ModelWeights
without transformers, whose import (its model code especially) was most of the predictor's
start-up. Tensors are memory-mapped from the files: a weight used as it is stored is not
copied at all, and q/k/v and gate/up are each copied once, into their fused tensor."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ..cpu_linear import cpu_linear_if_cpu
from .layer_ops import NormWeights
from .llama_config import LlamaFamilyConfig
from .llama_family import LayerWeights, ModelWeights, linear
from .rotary import RotaryEmbedding

ACTIVATION_MODULES = {
    "silu": torch.nn.SiLU,
    "gelu": torch.nn.GELU,
    "gelu_pytorch_tanh": lambda: torch.nn.GELU(approximate="tanh"),
}


class CheckpointError(ValueError):
    """The checkpoint's tensors do not match its config.json."""


class SafetensorsCheckpoint:
    """The tensors of every *.safetensors file of a directory, by name, as `dtype` on `device`."""

    def __init__(self, path: Path, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype = dtype
        self.device = device
        self._files = {}
        for file_path in sorted(path.glob("*.safetensors")):
            handle = safe_open(file_path, framework="pt")
            self._files.update(dict.fromkeys(handle.keys(), handle))

    def tensor(self, name: str) -> torch.Tensor:
        """The stored tensor, converted only where its dtype or device differs."""
        return self._stored(name).to(device=self.device, dtype=self.dtype)

    def optional(self, name: str, present: bool) -> torch.Tensor | None:
        return self.tensor(name) if present else None

    def concatenated(self, names: list[str]) -> torch.Tensor:
        """The tensors stacked along their first dimension, copied straight into one new tensor."""
        stored = [self._stored(name) for name in names]
        rows = sum(tensor.shape[0] for tensor in stored)
        fused = torch.empty((rows, *stored[0].shape[1:]), dtype=self.dtype, device=self.device)
        start = 0
        for tensor in stored:
            fused[start : start + tensor.shape[0]].copy_(tensor)
            start += tensor.shape[0]
        return fused

    def _stored(self, name: str) -> torch.Tensor:
        handle = self._files.get(name)
        if handle is None:
            raise CheckpointError(f"the checkpoint has no tensor {name}")
        return handle.get_tensor(name)


def load_llama_family(
    path: Path, config: LlamaFamilyConfig, dtype: torch.dtype, device: torch.device
) -> ModelWeights:
    checkpoint = SafetensorsCheckpoint(path, dtype, device)
    embed_tokens = torch.nn.Embedding.from_pretrained(checkpoint.tensor("model.embed_tokens.weight"), freeze=True)
    lm_head_weight = embed_tokens.weight if config.tie_word_embeddings else checkpoint.tensor("lm_head.weight")
    # The faster CPU product for the LM head, as loaded transformers models get (use_fast_cpu_layers).
    lm_head = cpu_linear_if_cpu(linear(lm_head_weight))
    with torch.no_grad():
        layers = [_layer(checkpoint, config, index) for index in range(config.num_hidden_layers)]
    return ModelWeights(
        embed_tokens=embed_tokens,
        layers=layers,
        norm=(checkpoint.tensor("model.norm.weight"), config.rms_norm_eps),
        lm_head=lm_head,
        rotary_emb=RotaryEmbedding(config.rope, config.head_dim, device),
        max_position_embeddings=config.max_position_embeddings,
        hidden_act=config.hidden_act,
    )


def _layer(checkpoint: SafetensorsCheckpoint, config: LlamaFamilyConfig, index: int) -> LayerWeights:
    prefix = f"model.layers.{index}."

    def norm(name: str) -> NormWeights:
        return checkpoint.tensor(f"{prefix}{name}.weight"), config.rms_norm_eps

    def projections(module: str, names: tuple[str, ...], bias: bool) -> torch.nn.Linear:
        weight = checkpoint.concatenated([f"{prefix}{module}.{name}.weight" for name in names])
        biases = checkpoint.concatenated([f"{prefix}{module}.{name}.bias" for name in names]) if bias else None
        return linear(weight, biases)

    def projection(module: str, name: str, bias: bool) -> torch.nn.Linear:
        return linear(checkpoint.tensor(f"{prefix}{module}.{name}.weight"),
                      checkpoint.optional(f"{prefix}{module}.{name}.bias", bias))

    head_norms = None
    if config.has_head_norms:
        head_norms = (norm("self_attn.q_norm"), norm("self_attn.k_norm"))
    return LayerWeights(
        layer_index=index,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        scaling=config.head_dim**-0.5,
        sliding_window=config.sliding_windows[index],
        qkv_proj=projections("self_attn", ("q_proj", "k_proj", "v_proj"), config.qkv_bias),
        o_proj=projection("self_attn", "o_proj", config.o_proj_bias),
        gate_up_proj=projections("mlp", ("gate_proj", "up_proj"), config.mlp_bias),
        down_proj=projection("mlp", "down_proj", config.mlp_bias),
        act_fn=ACTIVATION_MODULES[config.hidden_act](),
        input_norm=norm("input_layernorm"),
        post_attention_norm=norm("post_attention_layernorm"),
        head_norms=head_norms,
    )
