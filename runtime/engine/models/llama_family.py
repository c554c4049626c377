"""One forward pass for Llama, Mistral, Qwen2 and Qwen3 checkpoints over the packed batch.

Built from the transformers model after it loaded the checkpoint (so loading, configs and
rotary scaling stay transformers'), with q/k/v and gate/up fused into single matmuls and
without transformers' per-layer wrappers: fewer, larger kernels per step, which is what
a CPU decode step at small batch is bound by.
"""

from __future__ import annotations

import torch

from ..attention import AttentionMetadata, paged_attention
from ..layers import skinny_if_cpu

LLAMA_FAMILY_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# transformers' RoPE variants that choose frequencies from the batch's longest position
# (with a host-side comparison in some transformers versions).
LONGEST_POSITION_ROPE_TYPES = ("dynamic", "longrope")


def _fuse_linears(*linears: torch.nn.Linear) -> torch.nn.Linear:
    """One Linear whose output is the concatenation of the given ones' outputs."""
    first = linears[0]
    has_bias = [linear.bias is not None for linear in linears]
    fused = torch.nn.Linear(
        first.in_features,
        sum(linear.out_features for linear in linears),
        bias=any(has_bias),
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([linear.weight for linear in linears]))
        if any(has_bias):
            fused.bias.copy_(
                torch.cat([
                    linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
                    for linear in linears
                ])
            )
    fused.requires_grad_(False)
    return fused


def _rms_norm(norm: torch.nn.Module | None) -> tuple[torch.Tensor, float] | None:
    if norm is None:
        return None
    return norm.weight, norm.variance_epsilon


def _apply_rms_norm(hidden: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    """transformers' RMSNorm: normalise in float32, scale in the input dtype."""
    weight, eps = norm
    normalised = hidden.float()
    normalised = normalised * torch.rsqrt(normalised.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normalised.to(hidden.dtype)


def _sliding_window(attention: torch.nn.Module) -> int | None:
    """Qwen2/Qwen3 set it per layer on the module; Mistral passes its config's at call time."""
    if hasattr(attention, "sliding_window"):
        return attention.sliding_window
    if attention.config.model_type == "mistral":
        return attention.config.sliding_window
    return None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class _Layer(torch.nn.Module):
    def __init__(self, hf_layer: torch.nn.Module) -> None:
        super().__init__()
        attention, mlp = hf_layer.self_attn, hf_layer.mlp
        self.layer_index = attention.layer_idx
        self.head_dim = attention.head_dim
        self.num_heads = attention.q_proj.out_features // self.head_dim
        self.num_kv_heads = attention.k_proj.out_features // self.head_dim
        self.scaling = attention.scaling
        self.sliding_window = _sliding_window(attention)
        self.qkv_proj = skinny_if_cpu(_fuse_linears(attention.q_proj, attention.k_proj, attention.v_proj))
        self.o_proj = skinny_if_cpu(attention.o_proj)
        self.q_norm = _rms_norm(getattr(attention, "q_norm", None))
        self.k_norm = _rms_norm(getattr(attention, "k_norm", None))
        self.gate_up_proj = skinny_if_cpu(_fuse_linears(mlp.gate_proj, mlp.up_proj))
        self.down_proj = skinny_if_cpu(mlp.down_proj)
        self.intermediate_size = mlp.gate_proj.out_features
        self.act_fn = mlp.act_fn
        self.input_norm = _rms_norm(hf_layer.input_layernorm)
        self.post_attention_norm = _rms_norm(hf_layer.post_attention_layernorm)

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        hidden = hidden + self._attention(_apply_rms_norm(hidden, self.input_norm), cos, sin, meta)
        return hidden + self._mlp(_apply_rms_norm(hidden, self.post_attention_norm))

    def _attention(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        queries, keys, values = self.qkv_proj(hidden).split([q_size, kv_size, kv_size], dim=-1)
        queries = queries.view(num_tokens, self.num_heads, self.head_dim)
        keys = keys.view(num_tokens, self.num_kv_heads, self.head_dim)
        values = values.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            queries = _apply_rms_norm(queries, self.q_norm)
            keys = _apply_rms_norm(keys, self.k_norm)
        queries, keys = _rotate(queries, cos, sin), _rotate(keys, cos, sin)
        output = paged_attention(
            queries, keys, values, self.layer_index, meta, self.scaling, self.sliding_window
        )
        return self.o_proj(output.reshape(num_tokens, q_size))

    def _mlp(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(hidden).split(self.intermediate_size, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class LlamaFamilyForward(torch.nn.Module):
    """forward(input_ids [tokens], positions [tokens], metadata, logits_indices) -> logits."""

    def __init__(self, hf_model: torch.nn.Module) -> None:
        super().__init__()
        decoder = hf_model.model
        self.embed_tokens = decoder.embed_tokens
        self.rotary_emb = decoder.rotary_emb
        self.layers = torch.nn.ModuleList(_Layer(layer) for layer in decoder.layers)
        self.norm = _rms_norm(decoder.norm)
        self.lm_head = hf_model.get_output_embeddings()

    @classmethod
    def supports(cls, hf_model: torch.nn.Module) -> bool:
        config = hf_model.config
        decoder = getattr(hf_model, "model", None)
        if config.model_type not in LLAMA_FAMILY_TYPES or decoder is None:
            return False
        layer = decoder.layers[0]
        return getattr(config, "hidden_act", "silu") in ("silu", "gelu", "gelu_pytorch_tanh") and all(
            hasattr(layer.self_attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")
        ) and all(hasattr(layer.mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))

    @property
    def rope_depends_on_longest_position(self) -> bool:
        """Whether RoPE picks its frequencies from the batch's positions, which some transformers
        versions decide on the host: a sync that a CUDA graph cannot hold."""
        rope_type = str(getattr(self.rotary_emb, "rope_type", "default"))
        return any(name in rope_type for name in LONGEST_POSITION_ROPE_TYPES)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(hidden, positions.unsqueeze(0))
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [tokens, 1, head_dim]
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, meta)
        hidden = _apply_rms_norm(hidden[logits_indices], self.norm)
        return self.lm_head(hidden)
