"""Paged attention in plain torch (CPU, and the fallback everywhere): gather the pages a
query needs, then scaled_dot_product_attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .metadata import AttentionBackend, AttentionMetadata, PrefillChunk


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
    mask = _decode_mask(meta, keys.shape[2])
    if sliding_window is not None:
        positions = torch.arange(mask.shape[-1], device=mask.device)
        first_visible = (meta.decode_context_lens - sliding_window).view(-1, 1, 1, 1)
        mask = mask & (positions >= first_visible)
    # One query token per row: fold the query heads that share a KV head into the
    # query-length dimension so no KV is repeated.
    grouped = queries.view(num_rows, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scaling)
    return out.reshape(num_rows, num_heads, head_dim)


def _decode_mask(meta: AttentionMetadata, max_len: int) -> torch.Tensor:
    """Which gathered positions each decode row attends; built once per step, shared by layers."""
    if meta.decode_mask is None:
        positions = torch.arange(max_len, device=meta.decode_context_lens.device)
        meta.decode_mask = (positions.unsqueeze(0) < meta.decode_context_lens.unsqueeze(1)).view(-1, 1, 1, max_len)
    return meta.decode_mask


def torch_prefill_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scaling: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """Prefill chunks one at a time: SDPA over the chunk's own K/V, or over its gathered
    pages when it follows cached context."""
    outputs = []
    for chunk in meta.prefills:
        rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
        outputs.append(_prefill_attention(
            queries[rows], keys[rows], values[rows], key_cache, value_cache, chunk, scaling, sliding_window
        ))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


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


TORCH_BACKEND = AttentionBackend("torch", torch_decode_attention, torch_prefill_attention)
