"""Per-step attention metadata: where each new token's KV goes and which KV each query reads.

The model runner builds it once per step; every attention layer reads it. The batch is
packed into one row of tokens: single-token queries (decodes) first, then prefill chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(slots=True)
class PrefillChunk:
    """`query_len` new tokens at `query_start` in the packed batch, after `num_context`
    tokens whose KV is already cached (0 for a fresh prompt without prefix hits)."""

    query_start: int
    query_len: int
    num_context: int
    # Block ids covering context and chunk; None when there is no earlier context.
    block_table: torch.Tensor | None


@dataclass(slots=True)
class AttentionMetadata:
    # Per layer: (key_cache, value_cache), each [num_blocks, block_size, num_kv_heads, head_dim].
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    # Flat cache slot (block_id * block_size + offset) for every new token, [num_tokens].
    slot_mapping: torch.Tensor
    num_decode_tokens: int
    # Decode rows: [num_decodes, max_blocks] block ids (padded with 0) ...
    decode_block_tables: torch.Tensor | None
    # ... and which of the gathered positions each row may attend, [num_decodes, 1, 1, max_len].
    decode_mask: torch.Tensor | None
    # Number of tokens (context + new) each decode row attends to, [num_decodes].
    decode_context_lens: torch.Tensor | None
    prefills: list[PrefillChunk]
    # decode_attention(queries [rows, heads, head_dim], key_cache, value_cache, metadata,
    # scale, sliding_window) -> [rows, heads, head_dim]: the backend the runner chose.
    decode_attention: Callable
