"""Paged attention in plain torch (CPU, and the fallback everywhere): gather the pages a
query needs, then scaled_dot_product_attention.

Plugged into transformers models through their attention-function registry, so every
architecture transformers builds runs on our paged KV cache unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .metadata import AttentionMetadata, PrefillChunk


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    attention_metadata: AttentionMetadata | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [1, heads, tokens, head_dim],
    key/value [1, kv_heads, tokens, head_dim]; returns [1, tokens, heads, head_dim]."""
    if attention_metadata is None:
        raise RuntimeError("paged attention needs attention_metadata; run the model through ModelRunner")
    output = paged_attention(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        module.layer_idx,
        attention_metadata,
        scaling if scaling is not None else query.shape[-1] ** -0.5,
        sliding_window,
    )
    return output.unsqueeze(0), None


def paged_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    layer_index: int,
    meta: AttentionMetadata,
    scaling: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """One layer over the packed batch: queries [tokens, heads, head_dim], the new tokens'
    keys/values [tokens, kv_heads, head_dim] (written to the cache here); returns
    [tokens, heads, head_dim]."""
    key_cache, value_cache = meta.kv_caches[layer_index]
    _write_kv(key_cache, value_cache, meta.slot_mapping, keys, values)
    output = torch.empty_like(queries)
    if meta.num_decode_tokens:
        output[: meta.num_decode_tokens] = meta.decode_attention(
            queries[: meta.num_decode_tokens], key_cache, value_cache, meta, scaling, sliding_window
        )
    for chunk in meta.prefills:
        rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
        output[rows] = _prefill_attention(
            queries[rows], keys[rows], values[rows], key_cache, value_cache, chunk, scaling, sliding_window
        )
    return output


def _write_kv(
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
) -> None:
    num_kv_heads, head_dim = key_cache.shape[-2:]
    key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, keys)
    value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, values)


def _gather_pages(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """[rows, max_blocks] block ids -> [rows, kv_heads, max_blocks * block_size, head_dim]."""
    rows, max_blocks = block_table.shape
    block_size, num_kv_heads, head_dim = cache.shape[1:]
    pages = cache.index_select(0, block_table.reshape(-1))
    return pages.view(rows, max_blocks * block_size, num_kv_heads, head_dim).transpose(1, 2)


def torch_decode_attention(
    queries: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scaling: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """Single-token queries: gather each row's pages into a padded batch, masked SDPA."""
    num_rows, num_heads, head_dim = queries.shape
    num_kv_heads = key_cache.shape[2]
    keys = _gather_pages(key_cache, meta.decode_block_tables)
    values = _gather_pages(value_cache, meta.decode_block_tables)
    mask = meta.decode_mask
    if sliding_window is not None:
        positions = torch.arange(mask.shape[-1], device=mask.device)
        first_visible = (meta.decode_context_lens - sliding_window).view(-1, 1, 1, 1)
        mask = mask & (positions >= first_visible)
    # One query token per row: fold the query heads that share a KV head into the
    # query-length dimension so no KV is repeated.
    grouped = queries.view(num_rows, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scaling)
    return out.reshape(num_rows, num_heads, head_dim)


def _prefill_attention(
    queries: torch.Tensor,
    new_keys: torch.Tensor,
    new_values: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    chunk: PrefillChunk,
    scaling: float,
    sliding_window: int | None,
) -> torch.Tensor:
    q = queries.transpose(0, 1).unsqueeze(0)  # [1, heads, n, head_dim]
    if chunk.num_context == 0 and sliding_window is None:
        k = new_keys.transpose(0, 1).unsqueeze(0)
        v = new_values.transpose(0, 1).unsqueeze(0)
        out = _sdpa_gqa(q, k, v, mask=None, scaling=scaling)
    else:
        total = chunk.num_context + chunk.query_len
        if chunk.block_table is None:
            k = new_keys.transpose(0, 1).unsqueeze(0)
            v = new_values.transpose(0, 1).unsqueeze(0)
        else:
            k = _gather_pages(key_cache, chunk.block_table.unsqueeze(0))[:, :, :total]
            v = _gather_pages(value_cache, chunk.block_table.unsqueeze(0))[:, :, :total]
        out = _sdpa_gqa(q, k, v, mask=_causal_mask(chunk, total, sliding_window, q.device), scaling=scaling)
    return out[0].transpose(0, 1)


def _causal_mask(chunk: PrefillChunk, total: int, sliding_window: int | None, device) -> torch.Tensor:
    """Query i sits at position num_context + i and sees keys at positions <= its own."""
    query_positions = torch.arange(chunk.num_context, total, device=device).unsqueeze(1)
    key_positions = torch.arange(total, device=device).unsqueeze(0)
    mask = key_positions <= query_positions
    if sliding_window is not None:
        mask &= key_positions > query_positions - sliding_window
    return mask


def _sdpa_gqa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        # Measured faster on CPU than SDPA's enable_gqa for multi-token queries.
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling)
