"""Our forward pass for Gemma 3's text model (`gemma3_text`): the llama family's, with Gemma's
differences, each as transformers' modeling_gemma3.py computes it.

The runner does not choose it: on Gemma 3 270M on the CPU it is not clearly faster than
transformers' modules on our paged attention (benchmarks/gemma3_forward.py, BENCHMARKS.md:
8 % faster decode steps at batch 1, 3 % at batch 8, none on a 500-token prefill; the shared
LM head over 262k tokens is 36-40 % of a decode step). It stays for that benchmark, to measure
again on larger Gemma 3 models or other machines.

- RMSNorm scales by (1 + weight) in float32 before casting back (Llama: weight times the
  normalised value cast first), so `norm()` keeps 1 + weight in float32.
- Four norms per layer: the attention's and the MLP's outputs are normalised before they join
  the residual stream, and the MLP has its own input norm.
- Each layer is sliding or full attention (config.layer_types), with its own window and its own
  RoPE (local and global theta): the rotary embedding takes the layer type.
- The embedding scaled by sqrt(hidden_size), the per-head q/k norms, query_pre_attn_scalar's
  scaling and the tied LM head come with the modules reused from the transformers model.

The norms, RoPE and activation always run as torch ops: the fused Triton kernels
(fused_layer_ops.py) round the normalised value to the model's dtype before scaling, Llama's
order, which differs from Gemma's in half precision.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from ..attention import AttentionMetadata
from .layer_ops import Norm, NormWeights, TorchLayerOps, normalised_rms
from .llama_family import (
    DecoderLayer,
    LayerWeights,
    LlamaFamilyForward,
    ModelWeights,
    has_llama_layout,
    layer_weights_from_transformers,
    norm_weights,
)

GEMMA3_TYPE = "gemma3_text"


class Gemma3LayerOps(TorchLayerOps):
    def linear(self, linear: torch.nn.Linear) -> torch.nn.Module:
        """The plain Linear (`F.linear`, MKL), not CpuLinear's oneDNN product: at Gemma 3 270M's
        shapes oneDNN costs about 100 us more per call at one row (1024x640: 227 against 106 us),
        and the 18 layers' matmuls took 32.9 ms a decode step at batch 1 against 21.8, 42.9
        against 47.2 at batch 8 (2 threads; benchmarks/gemma3_forward.py has the whole steps)."""
        return linear

    def norm(self, weights: NormWeights) -> Norm:
        weight, eps = weights
        return 1.0 + weight.float(), eps

    def rms_norm(self, hidden: torch.Tensor, norm: Norm) -> torch.Tensor:
        unit_offset_weight, eps = norm
        return (normalised_rms(hidden, eps) * unit_offset_weight).to(hidden.dtype)


@dataclass(slots=True, kw_only=True)
class Gemma3LayerWeights(LayerWeights):
    """A llama layer's weights and Gemma 3's: its attention type (sliding or full), its MLP's own norms."""

    layer_type: str
    pre_feedforward_norm: NormWeights
    post_feedforward_norm: NormWeights


def gemma3_layer_weights(hf_layer: torch.nn.Module) -> Gemma3LayerWeights:
    weights = layer_weights_from_transformers(hf_layer)
    return Gemma3LayerWeights(
        **{field.name: getattr(weights, field.name) for field in fields(LayerWeights)},
        layer_type=hf_layer.self_attn.layer_type,
        pre_feedforward_norm=norm_weights(hf_layer.pre_feedforward_layernorm),
        post_feedforward_norm=norm_weights(hf_layer.post_feedforward_layernorm),
    )


class Gemma3DecoderLayer(DecoderLayer):
    def __init__(self, weights: Gemma3LayerWeights, ops: TorchLayerOps) -> None:
        super().__init__(weights, ops)
        self.layer_type = weights.layer_type
        self.pre_feedforward_norm = ops.norm(weights.pre_feedforward_norm)
        self.post_feedforward_norm = ops.norm(weights.post_feedforward_norm)

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor | None, rope: Any, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As DecoderLayer's: (this layer's normalised MLP output, the residual stream before it adds)."""
        hidden, residual = self._add_input_norm(hidden, residual)
        hidden = self.ops.rms_norm(self._attention(hidden, rope, meta), self.post_attention_norm)
        hidden, residual = self.ops.add_rms_norm(hidden, residual, self.pre_feedforward_norm)
        return self.ops.rms_norm(self._mlp(hidden), self.post_feedforward_norm), residual


class Gemma3Forward(LlamaFamilyForward):
    """LlamaFamilyForward's interface; `fused_kernels` is ignored (see the module's note)."""

    layer_class = Gemma3DecoderLayer
    layer_weights_from_transformers = staticmethod(gemma3_layer_weights)

    @staticmethod
    def make_layer_ops(weights: ModelWeights, fused_kernels: bool, table_positions: int) -> TorchLayerOps:
        return Gemma3LayerOps(weights.rotary_emb)

    @classmethod
    def supports(cls, hf_model: torch.nn.Module) -> bool:
        """Gemma 3 text models, except the variants this forward leaves to transformers: final
        logit softcapping, bidirectional attention (attention softcapping the loader refuses)."""
        config = hf_model.config
        decoder = getattr(hf_model, "model", None)
        if config.model_type != GEMMA3_TYPE or decoder is None:
            return False
        if config.final_logit_softcapping is not None or config.use_bidirectional_attention:
            return False
        layer = decoder.layers[0]
        return has_llama_layout(layer) and hasattr(layer, "post_feedforward_layernorm")

    def layer_ropes(self, hidden: torch.Tensor, positions: torch.Tensor) -> list[Any]:
        """One RoPE per layer type (sliding, full), each computed once per step."""
        ropes = {}
        for layer in self.layers:
            if layer.layer_type not in ropes:
                ropes[layer.layer_type] = self.ops.rope_for_step(hidden, positions, layer.layer_type)
        return [ropes[layer.layer_type] for layer in self.layers]
