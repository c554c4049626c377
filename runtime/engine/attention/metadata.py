"""Per-step attention metadata: where each new token's KV goes and which KV each query reads.

The model runner builds it once per step; every attention layer reads it. The batch is
packed into one row of tokens: single-token queries (decodes) first, then prefill chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True, slots=True)
class AttentionBackend:
    """The attention implementation the runner chose once; layers reach it through the metadata.

    decode(queries [rows, heads, head_dim], key_cache, value_cache, meta, scale, sliding_window)
    -> [rows, heads, head_dim], for the step's decode rows.
    prefill(queries [tokens, heads, head_dim], keys, values [tokens, kv_heads, head_dim],
    key_cache, value_cache, meta, scale, sliding_window) -> [tokens, heads, head_dim], for
    the step's prefill tokens; their K/V are already in the cache.
    """

    name: str
    decode: Callable
    prefill: Callable
    # How prefills are described: False, one PrefillChunk each (`prefills`, looped over in
    # Python); True, packed tensors for one kernel launch (`prefill_block_tables`, ...).
    packed_prefill: bool = False


@dataclass(slots=True)
class PrefillChunk:
    """`query_len` new tokens at `query_start` among the step's prefill tokens, after
    `num_context` tokens whose KV is already cached (0 for a fresh prompt without prefix hits)."""

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
    # Decode rows: [num_decodes, max_blocks] block ids (int64, padded with 0) ...
    decode_block_tables: torch.Tensor | None
    # ... and which of the gathered positions each row may attend, [num_decodes, 1, 1, max_len]:
    # only the torch backend needs it, so it builds it on first use in a step (None until then).
    decode_mask: torch.Tensor | None
    # Number of tokens (context + new) each decode row attends to, [num_decodes] int64 ...
    decode_context_lens: torch.Tensor | None
    # ... and their maximum, known on the host (0 without decodes).
    decode_max_context_len: int
    # Prefill chunks, one object each; empty for backends with packed_prefill.
    prefills: list[PrefillChunk]
    backend: AttentionBackend
    # Packed prefills (backends with packed_prefill only, else None), P chunks in batch order:
    # block ids covering each chunk's context and itself, int32 [P, max_blocks] (padded with 0);
    prefill_block_tables: torch.Tensor | None = None
    # cumulative chunk starts among the prefill tokens, int32 [P + 1];
    prefill_query_start_loc: torch.Tensor | None = None
    # tokens cached before each chunk, int32 [P]; and the longest chunk (host int).
    prefill_context_lens: torch.Tensor | None = None
    max_prefill_query_len: int = 0
