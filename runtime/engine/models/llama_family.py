"""One forward pass for Llama, Mistral, Qwen2 and Qwen3 checkpoints over the packed batch.

Built from the layers' weights with q/k/v and gate/up fused into single matmuls and without
transformers' per-layer wrappers: fewer, larger kernels per step, which is what a CPU decode
step at small batch is bound by. The weights come from our own checkpoint reader
(llama_checkpoint.py: no transformers import at start-up) or, for what it does not cover, from
the transformers model after it loaded the checkpoint (`LlamaFamilyForward.from_transformers`).
The small ops between the matmuls come from layer_ops.py: torch's, fused Triton kernels on CUDA,
or a C++ extension on the CPU (cpu_layer_ops.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..attention import AttentionMetadata, paged_attention
from .cpu_layer_ops import cpu_fused_layer_ops
from .layer_ops import NormWeights, TorchLayerOps, rope_depends_on_longest_position

LLAMA_FAMILY_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(slots=True)
class LayerWeights:
    """One decoder layer as DecoderLayer computes it, whichever reader loaded it. The fused
    projections hold the one copy of their weights (q, k, v rows; gate, up rows)."""

    layer_index: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float
    sliding_window: int | None
    qkv_proj: torch.nn.Linear
    o_proj: torch.nn.Linear
    gate_up_proj: torch.nn.Linear
    down_proj: torch.nn.Linear
    act_fn: Callable[[torch.Tensor], torch.Tensor]
    input_norm: NormWeights
    post_attention_norm: NormWeights
    # Qwen3's per-head query and key norms.
    head_norms: tuple[NormWeights, NormWeights] | None = None


@dataclass(slots=True)
class ModelWeights:
    """A whole llama-family model: what LlamaFamilyForward is built from."""

    embed_tokens: torch.nn.Embedding
    layers: list[LayerWeights]
    norm: NormWeights
    lm_head: torch.nn.Module
    # forward(hidden, positions [1, tokens]) -> (cos, sin), each [1, tokens, head_dim]: transformers'
    # rotary embedding, or ours (rotary.py) for the checkpoints we read.
    rotary_emb: torch.nn.Module
    max_position_embeddings: int
    hidden_act: str

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def norms(self) -> list[NormWeights]:
        """Every RMSNorm of the model, the per-head ones included."""
        layer_norms = (
            (layer.input_norm, layer.post_attention_norm, *(layer.head_norms or ())) for layer in self.layers
        )
        return [self.norm, *itertools.chain.from_iterable(layer_norms)]


def linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Linear:
    """A Linear over the given tensors as they are (no copy, no random initialisation)."""
    out_features, in_features = weight.shape
    layer = torch.nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=weight.dtype)
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias, requires_grad=False)
    return layer


def _fuse_linears(*linears: torch.nn.Linear) -> torch.nn.Linear:
    """One Linear whose output is the concatenation of the given ones' outputs.

    Its weight is the one copy: each given Linear's weight (and bias) becomes a view of its rows,
    so the transformers modules still work and the model's memory does not grow by the fused
    layers."""
    has_bias = any(layer.bias is not None for layer in linears)
    with torch.no_grad():
        weight = torch.cat([layer.weight for layer in linears])
        bias = None
        if has_bias:
            bias = torch.cat([
                layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features)
                for layer in linears
            ])
    fused = linear(weight, bias)
    start = 0
    for layer in linears:
        rows = slice(start, start + layer.out_features)
        layer.weight = torch.nn.Parameter(fused.weight[rows], requires_grad=False)
        if layer.bias is not None:
            layer.bias = torch.nn.Parameter(fused.bias[rows], requires_grad=False)
        start = rows.stop
    return fused


def has_llama_layout(hf_layer: torch.nn.Module) -> bool:
    """Whether a transformers decoder layer has the modules layer_weights_from_transformers reads."""
    attention, mlp = hf_layer.self_attn, hf_layer.mlp
    return all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")) and all(
        hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")
    )


def _sliding_window(attention: torch.nn.Module) -> int | None:
    """Qwen2/Qwen3 set it per layer on the module; Mistral passes its config's at call time."""
    if hasattr(attention, "sliding_window"):
        return attention.sliding_window
    if attention.config.model_type == "mistral":
        return attention.config.sliding_window
    return None


def norm_weights(module: torch.nn.Module) -> NormWeights:
    """(weight, eps) of a transformers RMSNorm (Llama's names its eps variance_epsilon, Gemma's eps)."""
    return module.weight, getattr(module, "variance_epsilon", None) or module.eps


def layer_weights_from_transformers(hf_layer: torch.nn.Module) -> LayerWeights:
    attention, mlp = hf_layer.self_attn, hf_layer.mlp
    head_dim = attention.head_dim
    head_norms = None
    if getattr(attention, "q_norm", None) is not None:
        head_norms = (norm_weights(attention.q_norm), norm_weights(attention.k_norm))
    return LayerWeights(
        layer_index=attention.layer_idx,
        num_heads=attention.q_proj.out_features // head_dim,
        num_kv_heads=attention.k_proj.out_features // head_dim,
        head_dim=head_dim,
        scaling=attention.scaling,
        sliding_window=_sliding_window(attention),
        qkv_proj=_fuse_linears(attention.q_proj, attention.k_proj, attention.v_proj),
        o_proj=attention.o_proj,
        gate_up_proj=_fuse_linears(mlp.gate_proj, mlp.up_proj),
        down_proj=mlp.down_proj,
        act_fn=mlp.act_fn,
        input_norm=norm_weights(hf_layer.input_layernorm),
        post_attention_norm=norm_weights(hf_layer.post_attention_layernorm),
        head_norms=head_norms,
    )


class DecoderLayer(torch.nn.Module):
    def __init__(self, weights: LayerWeights, ops: TorchLayerOps) -> None:
        super().__init__()
        self.ops = ops
        self.layer_index = weights.layer_index
        self.head_dim = weights.head_dim
        self.num_heads = weights.num_heads
        self.num_kv_heads = weights.num_kv_heads
        self.scaling = weights.scaling
        self.sliding_window = weights.sliding_window
        self.qkv_proj = ops.linear(weights.qkv_proj)
        self.o_proj = ops.linear(weights.o_proj)
        # Qwen3 RMS-normalises each query and key head before RoPE.
        self.head_norms = None
        if weights.head_norms is not None:
            self.head_norms = tuple(ops.norm(norm) for norm in weights.head_norms)
        self.gate_up_proj = ops.linear(weights.gate_up_proj)
        self.down_proj = ops.linear(weights.down_proj)
        self.act_fn = weights.act_fn
        self.input_norm = ops.norm(weights.input_norm)
        self.post_attention_norm = ops.norm(weights.post_attention_norm)

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor | None, rope: Any, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it adds): each layer adds its
        predecessor's output to the residual itself, so the add fuses with the norm after it."""
        hidden, residual = self._add_input_norm(hidden, residual)
        hidden = self._attention(hidden, rope, meta)
        hidden, residual = self.ops.add_rms_norm(hidden, residual, self.post_attention_norm)
        return self._mlp(hidden), residual

    def _add_input_norm(
        self, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the attention's input, the residual stream with the previous layer's output added)."""
        if residual is None:
            return self.ops.rms_norm(hidden, self.input_norm), hidden
        return self.ops.add_rms_norm(hidden, residual, self.input_norm)

    def _attention(self, hidden: torch.Tensor, rope: Any, meta: AttentionMetadata) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        queries, keys, values = self.qkv_proj(hidden).split([q_size, kv_size, kv_size], dim=-1)
        queries = queries.view(num_tokens, self.num_heads, self.head_dim)
        keys = keys.view(num_tokens, self.num_kv_heads, self.head_dim)
        values = values.view(num_tokens, self.num_kv_heads, self.head_dim)
        queries, keys = self.ops.rotate(queries, keys, rope, self.head_norms)
        output = paged_attention(
            queries, keys, values, self.layer_index, meta, self.scaling, self.sliding_window
        )
        return self.o_proj(output.reshape(num_tokens, q_size))

    def _mlp(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.gated_activation(self.act_fn, self.gate_up_proj(hidden)))


class LlamaFamilyForward(torch.nn.Module):
    """forward(input_ids [tokens], positions [tokens], metadata, logits_indices) -> logits.

    With `fused_kernels` the norms, RoPE and activation run as Triton kernels (runtime/engine/kernels):
    for CUDA, where the runner has chosen the triton attention backend."""

    layer_class = DecoderLayer

    def __init__(self, weights: ModelWeights, fused_kernels: bool = False, max_positions: int | None = None) -> None:
        super().__init__()
        self.embed_tokens = weights.embed_tokens
        self.rotary_emb = weights.rotary_emb
        # A model whose context is 128k positions would otherwise get RoPE tables of 128 MiB.
        table_positions = min(weights.max_position_embeddings, max_positions or weights.max_position_embeddings)
        self.ops = self.make_layer_ops(weights, fused_kernels, table_positions)
        self.layers = torch.nn.ModuleList(self.layer_class(layer, self.ops) for layer in weights.layers)
        self.norm = self.ops.norm(weights.norm)
        self.lm_head = weights.lm_head

    @classmethod
    def from_transformers(cls, hf_model: torch.nn.Module, fused_kernels: bool = False) -> LlamaFamilyForward:
        """Over a loaded transformers model (one that `supports`), sharing its weights."""
        return cls(cls.weights_from_transformers(hf_model), fused_kernels)

    @classmethod
    def weights_from_transformers(cls, hf_model: torch.nn.Module) -> ModelWeights:
        decoder, config = hf_model.model, hf_model.config
        return ModelWeights(
            embed_tokens=decoder.embed_tokens,
            layers=[cls.layer_weights_from_transformers(layer) for layer in decoder.layers],
            norm=norm_weights(decoder.norm),
            lm_head=hf_model.get_output_embeddings(),
            rotary_emb=decoder.rotary_emb,
            max_position_embeddings=config.max_position_embeddings,
            hidden_act=getattr(config, "hidden_act", "silu"),
        )

    layer_weights_from_transformers = staticmethod(layer_weights_from_transformers)

    @staticmethod
    def make_layer_ops(weights: ModelWeights, fused_kernels: bool, table_positions: int) -> TorchLayerOps:
        """Triton kernels with `fused_kernels` (the caller has checked that Triton runs here); on
        the CPU the C++ ones where they build and cover the model's dtype; else torch. The fused
        ops' RoPE tables cover positions 0 .. table_positions - 1."""
        if fused_kernels:
            # Imported here: it imports triton, which the torch path must not need.
            from .fused_layer_ops import FusedLayerOps

            return FusedLayerOps(weights.rotary_emb, table_positions, weights.dtype, weights.hidden_act)
        if weights.embed_tokens.weight.device.type == "cpu":
            cpu_ops = cpu_fused_layer_ops(weights.rotary_emb, table_positions, weights.dtype, weights.hidden_act,
                                          (weight for weight, _ in weights.norms))
            if cpu_ops is not None:
                return cpu_ops
        return TorchLayerOps(weights.rotary_emb)

    @classmethod
    def supports(cls, hf_model: torch.nn.Module) -> bool:
        """Whether a transformers model is one this forward computes."""
        config = hf_model.config
        decoder = getattr(hf_model, "model", None)
        if config.model_type not in LLAMA_FAMILY_TYPES or decoder is None:
            return False
        return getattr(config, "hidden_act", "silu") in ("silu", "gelu", "gelu_pytorch_tanh") and has_llama_layout(
            decoder.layers[0]
        )

    @property
    def rope_depends_on_longest_position(self) -> bool:
        """Whether RoPE picks its frequencies from the batch's positions, which some transformers
        versions decide on the host: a sync that a CUDA graph cannot hold."""
        return rope_depends_on_longest_position(self.rotary_emb)

    def layer_ropes(self, hidden: torch.Tensor, positions: torch.Tensor) -> Iterable[Any]:
        """Each layer's RoPE for this step: here all share one."""
        return itertools.repeat(self.ops.rope_for_step(hidden, positions))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer, rope in zip(self.layers, self.layer_ropes(hidden, positions)):
            hidden, residual = layer(hidden, residual, rope, meta)
        hidden, _ = self.ops.add_rms_norm(hidden[logits_indices], residual[logits_indices], self.norm)
        return self.lm_head(hidden)
