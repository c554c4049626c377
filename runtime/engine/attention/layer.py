"""The attention step of every layer: write the new tokens' K/V into the paged cache, then
attend with the backend the runner chose (decodes and prefills separately).

Plugged into transformers models through their attention-function registry, so every
architecture transformers builds runs on our paged KV cache unchanged.
"""

from __future__ import annotations

import torch

from .metadata import AttentionMetadata


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
    backend, num_decodes = meta.backend, meta.num_decode_tokens
    if num_decodes == queries.shape[0]:
        return backend.decode(queries, key_cache, value_cache, meta, scaling, sliding_window)
    prefill_rows = slice(num_decodes, None)
    prefill_output = backend.prefill(
        queries[prefill_rows], keys[prefill_rows], values[prefill_rows],
        key_cache, value_cache, meta, scaling, sliding_window,
    )
    if not num_decodes:
        return prefill_output
    decode_output = backend.decode(queries[:num_decodes], key_cache, value_cache, meta, scaling, sliding_window)
    return torch.cat((decode_output, prefill_output))


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
