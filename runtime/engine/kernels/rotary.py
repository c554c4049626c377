"""Rotary position embedding (the rotate-half layout of Llama, Mistral and Qwen) applied to the
queries and keys in place, one launch for both, reading cos/sin from a table built once per model.
For Qwen3 the per-head RMSNorm of queries and keys, which comes right before RoPE, runs in the
same launch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    heads_ptr, stride_head, norm_weight_ptr, eps, cos_first, cos_second, sin_first, sin_second,
    NUM_HEADS: tl.constexpr, HEADS_PADDED: tl.constexpr, HALF: tl.constexpr, HALF_PADDED: tl.constexpr,
    APPLY_NORM: tl.constexpr,
):
    """Rotate one token's heads [NUM_HEADS, 2 * HALF] in place, normalising each head first
    with APPLY_NORM (transformers' RMSNorm: float32 statistics, rounded to the input dtype
    before and after the weight)."""
    heads = tl.arange(0, HEADS_PADDED)
    dims = tl.arange(0, HALF_PADDED)
    mask = (heads < NUM_HEADS)[:, None] & (dims < HALF)[None, :]
    first_half = heads_ptr + heads[:, None] * stride_head + dims[None, :]
    dtype = heads_ptr.dtype.element_ty
    x_first = tl.load(first_half, mask=mask, other=0.0).to(tl.float32)
    x_second = tl.load(first_half + HALF, mask=mask, other=0.0).to(tl.float32)
    if APPLY_NORM:
        sum_of_squares = tl.sum(x_first * x_first, 1) + tl.sum(x_second * x_second, 1)
        inverse_rms = tl.rsqrt(sum_of_squares / (2 * HALF) + eps)[:, None]
        weight_first = tl.load(norm_weight_ptr + dims, mask=dims < HALF, other=0.0).to(tl.float32)[None, :]
        weight_second = tl.load(norm_weight_ptr + HALF + dims, mask=dims < HALF, other=0.0).to(tl.float32)[None, :]
        x_first = (weight_first * (x_first * inverse_rms).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
        x_second = (weight_second * (x_second * inverse_rms).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    # x * cos + rotate_half(x) * sin, where rotate_half(x) = (-x_second, x_first).
    tl.store(first_half, (x_first * cos_first - x_second * sin_first).to(dtype), mask=mask)
    tl.store(first_half + HALF, (x_second * cos_second + x_first * sin_second).to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    query_ptr, key_ptr, positions_ptr, cos_ptr, sin_ptr, query_norm_ptr, key_norm_ptr, query_eps, key_eps,
    stride_query_token, stride_query_head, stride_key_token, stride_key_head, stride_table,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
    HEADS_PADDED: tl.constexpr, KV_HEADS_PADDED: tl.constexpr,
    HALF: tl.constexpr, HALF_PADDED: tl.constexpr, APPLY_NORM: tl.constexpr,
):
    """One program per token: all its query heads, then all its key heads."""
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF_PADDED)
    dim_mask = dims < HALF
    table_row = position * stride_table + dims
    cos_first = tl.load(cos_ptr + table_row, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
    cos_second = tl.load(cos_ptr + table_row + HALF, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
    sin_first = tl.load(sin_ptr + table_row, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
    sin_second = tl.load(sin_ptr + table_row + HALF, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(query_ptr + token * stride_query_token, stride_query_head, query_norm_ptr, query_eps,
                  cos_first, cos_second, sin_first, sin_second,
                  NUM_HEADS, HEADS_PADDED, HALF, HALF_PADDED, APPLY_NORM)
    _rotate_heads(key_ptr + token * stride_key_token, stride_key_head, key_norm_ptr, key_eps,
                  cos_first, cos_second, sin_first, sin_second,
                  NUM_KV_HEADS, KV_HEADS_PADDED, HALF, HALF_PADDED, APPLY_NORM)


def rotary_embedding(
    queries: torch.Tensor,
    keys: torch.Tensor,
    positions: torch.Tensor,
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
    head_norms: tuple[tuple[torch.Tensor, float], tuple[torch.Tensor, float]] | None = None,
) -> None:
    """Rotate queries [tokens, heads, head_dim] and keys [tokens, kv_heads, head_dim] in place
    (views into the fused QKV output are fine: only head_dim needs unit stride).

    positions [tokens] index cos_table/sin_table [max_positions, head_dim] (in the model's
    dtype, as transformers' rotary embedding returns them). With `head_norms` ((weight, eps) of
    the query norm, then of the key norm), each head is RMS-normalised first, as Qwen3 does."""
    num_tokens, num_heads, head_dim = queries.shape
    num_kv_heads = keys.shape[1]
    if keys.shape != (num_tokens, num_kv_heads, head_dim) or head_dim % 2:
        raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must share tokens "
                         "and an even head_dim")
    if queries.stride(-1) != 1 or keys.stride(-1) != 1:
        raise ValueError("queries and keys need a contiguous head_dim")
    if cos_table.shape[-1] != head_dim or cos_table.shape != sin_table.shape:
        raise ValueError(f"cos/sin tables must both be [max_positions, {head_dim}]")
    if not (cos_table.is_contiguous() and sin_table.is_contiguous()):
        raise ValueError("cos/sin tables must be contiguous")
    if num_tokens == 0:
        return
    # Without norms the weight pointers are never read; any tensor fills their place.
    (query_norm, query_eps), (key_norm, key_eps) = head_norms or ((cos_table, 0.0), (cos_table, 0.0))
    half = head_dim // 2
    _rotary_kernel[(num_tokens,)](
        queries, keys, positions, cos_table, sin_table, query_norm, key_norm, query_eps, key_eps,
        queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1), cos_table.stride(0),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads,
        HEADS_PADDED=triton.next_power_of_2(num_heads), KV_HEADS_PADDED=triton.next_power_of_2(num_kv_heads),
        HALF=half, HALF_PADDED=triton.next_power_of_2(half), APPLY_NORM=head_norms is not None,
        num_warps=4,
    )
