"""One forward pass for Llama, Mistral, Qwen2 and Qwen3 checkpoints over the packed batch.

Built from the transformers model after it loaded the checkpoint (so loading, configs and
rotary scaling stay transformers'), with q/k/v and gate/up fused into single matmuls and
without transformers' per-layer wrappers: fewer, larger kernels per step, which is what
a CPU decode step at small batch is bound by. The small ops between the matmuls come from
layer_ops.py: torch's, or fused Triton kernels on CUDA.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch

from ..attention import AttentionMetadata, paged_attention
from .layer_ops import TorchLayerOps, rope_depends_on_longest_position

LLAMA_FAMILY_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def _fuse_linears(*linears: torch.nn.Linear) -> torch.nn.Linear:
    """One Linear whose output is the concatenation of the given ones' outputs.

    Its weight is the one copy: each given Linear's weight (and bias) becomes a view of its rows,
    so the transformers modules still work and the model's memory does not grow by the fused
    layers. The fused Linear is made on the meta device, so no random initialisation is paid
    for weights that are then overwritten."""
    first = linears[0]
    has_bias = any(linear.bias is not None for linear in linears)
    out_features = sum(linear.out_features for linear in linears)
    fused = torch.nn.Linear(first.in_features, out_features, bias=has_bias, device="meta", dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight = torch.nn.Parameter(torch.cat([linear.weight for linear in linears]), requires_grad=False)
        if has_bias:
            fused.bias = torch.nn.Parameter(torch.cat([
                linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
                for linear in linears
            ]), requires_grad=False)
    start = 0
    for linear in linears:
        rows = slice(start, start + linear.out_features)
        linear.weight = torch.nn.Parameter(fused.weight[rows], requires_grad=False)
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(fused.bias[rows], requires_grad=False)
        start = rows.stop
    return fused


def has_llama_layout(hf_layer: torch.nn.Module) -> bool:
    """Whether a transformers decoder layer has the modules DecoderLayer reads."""
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


class DecoderLayer(torch.nn.Module):
    def __init__(self, hf_layer: torch.nn.Module, ops: TorchLayerOps) -> None:
        super().__init__()
        self.ops = ops
        attention, mlp = hf_layer.self_attn, hf_layer.mlp
        self.layer_index = attention.layer_idx
        self.head_dim = attention.head_dim
        self.num_heads = attention.q_proj.out_features // self.head_dim
        self.num_kv_heads = attention.k_proj.out_features // self.head_dim
        self.scaling = attention.scaling
        self.sliding_window = _sliding_window(attention)
        self.qkv_proj = ops.linear(_fuse_linears(attention.q_proj, attention.k_proj, attention.v_proj))
        self.o_proj = ops.linear(attention.o_proj)
        # Qwen3 RMS-normalises each query and key head before RoPE.
        self.head_norms = None
        if getattr(attention, "q_norm", None) is not None:
            self.head_norms = (ops.norm(attention.q_norm), ops.norm(attention.k_norm))
        self.gate_up_proj = ops.linear(_fuse_linears(mlp.gate_proj, mlp.up_proj))
        self.down_proj = ops.linear(mlp.down_proj)
        self.act_fn = mlp.act_fn
        self.input_norm = ops.norm(hf_layer.input_layernorm)
        self.post_attention_norm = ops.norm(hf_layer.post_attention_layernorm)

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

    def __init__(self, hf_model: torch.nn.Module, fused_kernels: bool = False) -> None:
        super().__init__()
        decoder = hf_model.model
        self.embed_tokens = decoder.embed_tokens
        self.rotary_emb = decoder.rotary_emb
        self.ops = self.make_layer_ops(hf_model, fused_kernels)
        self.layers = torch.nn.ModuleList(self.layer_class(layer, self.ops) for layer in decoder.layers)
        self.norm = self.ops.norm(decoder.norm)
        self.lm_head = hf_model.get_output_embeddings()

    @staticmethod
    def make_layer_ops(hf_model: torch.nn.Module, fused_kernels: bool) -> TorchLayerOps:
        """Triton kernels with `fused_kernels` (the caller has checked that Triton runs here), else torch."""
        rotary_emb = hf_model.model.rotary_emb
        if not fused_kernels:
            return TorchLayerOps(rotary_emb)
        # Imported here: it imports triton, which the torch path must not need.
        from .fused_layer_ops import FusedLayerOps

        config = hf_model.config
        return FusedLayerOps(rotary_emb, config.max_position_embeddings, hf_model.dtype,
                             getattr(config, "hidden_act", "silu"))

    @classmethod
    def supports(cls, hf_model: torch.nn.Module) -> bool:
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
