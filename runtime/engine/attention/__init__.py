"""Attention backends over the paged KV cache, registered with transformers by name."""

from __future__ import annotations

from transformers import AttentionInterface

from .metadata import AttentionMetadata, PrefillChunk
from .torch_backend import paged_attention_forward

# The name models are loaded with (`attn_implementation=...`).
PAGED_ATTENTION = "kserve_paged"

AttentionInterface.register(PAGED_ATTENTION, paged_attention_forward)

__all__ = ["PAGED_ATTENTION", "AttentionMetadata", "PrefillChunk", "paged_attention_forward"]
