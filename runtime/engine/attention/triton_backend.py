"""Paged attention kernels in Triton for CUDA GPUs: decode (one query token per sequence)
and varlen chunked prefill, both reading K/V straight out of the paged KV cache.

The torch backend gathers every page a query needs into a contiguous copy before SDPA;
these kernels walk the block table instead, so nothing is copied and padding is never read.
Cache layout per layer: [num_blocks, block_size, num_kv_heads, head_dim].
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .metadata import AttentionBackend, AttentionMetadata

# Running maxima start here rather than at -inf so that a row with nothing visible yet
# (a padded query head, an empty split) gives exp2(-inf - MIN) = 0 instead of NaN.
_MAX_INIT = tl.constexpr(-1.0e30)
_LOG2_E = 1.4426950408889634

_PREFILL_BLOCK_M = 64
_PREFILL_TILE = 64
# Tensor-core tiles are 16 rows tall, so a GQA group of query heads is padded up to 16 rows.
_MIN_GROUP_ROWS = 16
# Flash decoding: a split keeps at least this many keys, and there are never more splits.
_MIN_KEYS_PER_SPLIT = 256
_MAX_SPLITS = 16
# Decode programs in flight per SM that the split count aims for (see decode_num_splits): 4 was
# best or near it at batch 16, 64 and 256 on an H200 (2, 4, 8, 16 compared; BENCHMARKS.md).
DECODE_PROGRAMS_PER_SM = 4


@dataclass(frozen=True)
class DecodeLaunch:
    """How the decode kernel is launched. `tile`: keys per inner-loop step; it spans several
    pages (any block_size works: each key looks up its own page), a power of two >= 16 (the
    smallest K dimension tl.dot accepts on NVIDIA). `num_warps`, `num_stages`: Triton's launch
    settings (None: Triton's defaults, 4 warps and 3 stages). benchmarks/gpu_kernels.py
    compares settings on a card."""

    tile: int = 64
    num_warps: int | None = None
    num_stages: int | None = None

    def __post_init__(self) -> None:
        if self.tile < 16 or self.tile & (self.tile - 1):
            raise ValueError(f"the decode tile must be a power of two >= 16, got {self.tile}")

    def options(self) -> dict[str, int]:
        """The launch keyword arguments Triton takes (those that are set)."""
        options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        return {name: value for name, value in options.items() if value is not None}

    @classmethod
    def parse(cls, text: str) -> DecodeLaunch:
        """'TILE[:WARPS[:STAGES]]', e.g. '64', '128:8', '64:4:2' (an empty field keeps the default)."""
        fields = text.split(":")
        if not 1 <= len(fields) <= 3 or not all(field.isdigit() or field == "" for field in fields) or not fields[0]:
            raise ValueError(f"a decode launch is TILE[:WARPS[:STAGES]] in whole numbers, got {text!r}")
        values = [int(field) if field else None for field in fields] + [None] * (3 - len(fields))
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.tile}:{self.num_warps or ''}:{self.num_stages or ''}".rstrip(":")


# The launch paged_decode_attention uses unless given one (read at each call).
DECODE_LAUNCH = DecodeLaunch()


@triton.jit
def _online_softmax_step(qk, values, max_so_far, sum_so_far, acc, DOT_PRECISION: tl.constexpr):
    """Fold one tile of masked, log2-scaled scores [rows, keys] and its values [keys, dim]
    into the running max, sum and unnormalised output (all fp32)."""
    new_max = tl.maximum(max_so_far, tl.max(qk, 1))
    probs = tl.exp2(qk - new_max[:, None])
    rescale = tl.exp2(max_so_far - new_max)
    sum_so_far = sum_so_far * rescale + tl.sum(probs, 1)
    acc = acc * rescale[:, None] + tl.dot(probs.to(values.dtype), values, input_precision=DOT_PRECISION)
    return new_max, sum_so_far, acc


@triton.jit
def _load_kv_tile(
    key_cache_ptr, value_cache_ptr, block_table_row_ptr, positions, position_mask, kv_head, dims, dim_mask,
    stride_key_block, stride_key_token, stride_key_head,
    stride_value_block, stride_value_token, stride_value_head,
    BLOCK_SIZE: tl.constexpr,
):
    """Keys (transposed, [head_dim, tile], ready to be the right operand of q @ k^T) and
    values ([tile, head_dim]) at `positions`, each looked up through the block table."""
    # int64: block_id * stride_block overflows int32 on caches over 2**31 elements.
    block_ids = tl.load(block_table_row_ptr + positions // BLOCK_SIZE, mask=position_mask, other=0).to(tl.int64)
    slots = positions % BLOCK_SIZE
    key_offsets = block_ids * stride_key_block + slots * stride_key_token + kv_head * stride_key_head
    value_offsets = block_ids * stride_value_block + slots * stride_value_token + kv_head * stride_value_head
    keys_t = tl.load(key_cache_ptr + key_offsets[None, :] + dims[:, None],
                     mask=dim_mask[:, None] & position_mask[None, :], other=0.0)
    values = tl.load(value_cache_ptr + value_offsets[:, None] + dims[None, :],
                     mask=position_mask[:, None] & dim_mask[None, :], other=0.0)
    return keys_t, values


@triton.jit
def _decode_kernel(
    query_ptr, key_cache_ptr, value_cache_ptr, block_tables_ptr, context_lens_ptr,
    out_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
    qk_scale, sliding_window,
    stride_query_seq, stride_query_head,
    stride_key_block, stride_key_token, stride_key_head,
    stride_value_block, stride_value_token, stride_value_head,
    stride_block_table, stride_out_seq, stride_out_head,
    num_heads,
    QUERIES_PER_KV: tl.constexpr, GROUP_ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, NUM_SPLITS: tl.constexpr,
    USE_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per (sequence, KV head, split): all query heads of the GQA group share
    each K/V tile load."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    group = tl.arange(0, GROUP_ROWS)
    heads = kv_head * QUERIES_PER_KV + group
    head_mask = group < QUERIES_PER_KV
    dims = tl.arange(0, HEAD_DIM_PADDED)
    dim_mask = dims < HEAD_DIM
    query = tl.load(
        query_ptr + seq * stride_query_seq + heads[:, None] * stride_query_head + dims[None, :],
        mask=head_mask[:, None] & dim_mask[None, :], other=0.0,
    ).to(key_cache_ptr.dtype.element_ty)

    context_len = tl.load(context_lens_ptr + seq)
    first_visible = 0
    if USE_WINDOW:
        first_visible = tl.maximum(context_len - sliding_window, 0)
    # Splits share the visible span evenly, in whole tiles; trailing splits may be empty.
    keys_per_split = tl.cdiv(tl.cdiv(context_len - first_visible, NUM_SPLITS), TILE) * TILE
    split_start = first_visible + split * keys_per_split
    split_end = tl.minimum(split_start + keys_per_split, context_len)

    max_so_far = tl.full([GROUP_ROWS], _MAX_INIT, dtype=tl.float32)
    sum_so_far = tl.zeros([GROUP_ROWS], dtype=tl.float32)
    acc = tl.zeros([GROUP_ROWS, HEAD_DIM_PADDED], dtype=tl.float32)
    block_table_row = block_tables_ptr + seq * stride_block_table
    for tile_start in range(split_start, split_end, TILE):
        positions = tile_start + tl.arange(0, TILE)
        position_mask = positions < split_end
        keys_t, values = _load_kv_tile(
            key_cache_ptr, value_cache_ptr, block_table_row, positions, position_mask, kv_head, dims, dim_mask,
            stride_key_block, stride_key_token, stride_key_head,
            stride_value_block, stride_value_token, stride_value_head, BLOCK_SIZE,
        )
        qk = tl.dot(query, keys_t, input_precision=DOT_PRECISION) * qk_scale
        qk = tl.where(position_mask[None, :], qk, float("-inf"))
        max_so_far, sum_so_far, acc = _online_softmax_step(qk, values, max_so_far, sum_so_far, acc, DOT_PRECISION)

    store_mask = head_mask[:, None] & dim_mask[None, :]
    if NUM_SPLITS == 1:
        # A zero sum only happens on padding rows (context_len 0); write zeros, not NaN.
        out = acc / tl.where(sum_so_far == 0.0, 1.0, sum_so_far)[:, None]
        tl.store(out_ptr + seq * stride_out_seq + heads[:, None] * stride_out_head + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        # Partials are [num_seqs, num_heads, NUM_SPLITS] (+ [HEAD_DIM]), contiguous.
        rows = (seq * num_heads + heads) * NUM_SPLITS + split
        tl.store(partial_max_ptr + rows, max_so_far, mask=head_mask)
        tl.store(partial_sum_ptr + rows, sum_so_far, mask=head_mask)
        tl.store(partial_out_ptr + rows[:, None] * HEAD_DIM + dims[None, :], acc, mask=store_mask)


@triton.jit
def _decode_reduce_kernel(
    partial_out_ptr, partial_max_ptr, partial_sum_ptr, out_ptr,
    stride_out_seq, stride_out_head, num_heads,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr,
    NUM_SPLITS: tl.constexpr, SPLITS_PADDED: tl.constexpr,
):
    """One program per (sequence, query head): rescale each split's partial softmax to the
    common max and combine."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PADDED)
    split_mask = splits < NUM_SPLITS
    dims = tl.arange(0, HEAD_DIM_PADDED)
    dim_mask = dims < HEAD_DIM
    rows = (seq * num_heads + head) * NUM_SPLITS + splits
    split_max = tl.load(partial_max_ptr + rows, mask=split_mask, other=_MAX_INIT)
    split_sum = tl.load(partial_sum_ptr + rows, mask=split_mask, other=0.0)
    split_out = tl.load(partial_out_ptr + rows[:, None] * HEAD_DIM + dims[None, :],
                        mask=split_mask[:, None] & dim_mask[None, :], other=0.0)
    weights = tl.exp2(split_max - tl.max(split_max, 0))
    total = tl.sum(split_sum * weights, 0)
    out = tl.sum(split_out * weights[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(out_ptr + seq * stride_out_seq + head * stride_out_head + dims, out.to(out_ptr.dtype.element_ty),
             mask=dim_mask)


@triton.jit
def _prefill_kernel(
    query_ptr, key_cache_ptr, value_cache_ptr, block_tables_ptr, query_start_loc_ptr, context_lens_ptr, out_ptr,
    qk_scale, sliding_window,
    stride_query_token, stride_query_head,
    stride_key_block, stride_key_token, stride_key_head,
    stride_value_block, stride_value_token, stride_value_head,
    stride_block_table, stride_out_token, stride_out_head,
    QUERIES_PER_KV: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, TILE: tl.constexpr,
    USE_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per (query block of BLOCK_M tokens, sequence, query head)."""
    query_block = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // QUERIES_PER_KV

    query_start = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - query_start
    # The grid is sized for the longest chunk; shorter ones leave these programs idle.
    if query_block * BLOCK_M >= query_len:
        return
    num_context = tl.load(context_lens_ptr + seq)

    rows = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < query_len
    query_positions = num_context + rows
    dims = tl.arange(0, HEAD_DIM_PADDED)
    dim_mask = dims < HEAD_DIM
    query = tl.load(
        query_ptr + (query_start + rows)[:, None] * stride_query_token + head * stride_query_head + dims[None, :],
        mask=row_mask[:, None] & dim_mask[None, :], other=0.0,
    ).to(key_cache_ptr.dtype.element_ty)

    # Causal: nothing past this block's last query; with a window, nothing before its first
    # query's window.
    keys_end = num_context + tl.minimum((query_block + 1) * BLOCK_M, query_len)
    keys_start = 0
    if USE_WINDOW:
        keys_start = tl.maximum(num_context + query_block * BLOCK_M - sliding_window + 1, 0)

    max_so_far = tl.full([BLOCK_M], _MAX_INIT, dtype=tl.float32)
    sum_so_far = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PADDED], dtype=tl.float32)
    block_table_row = block_tables_ptr + seq * stride_block_table
    for tile_start in range(keys_start, keys_end, TILE):
        positions = tile_start + tl.arange(0, TILE)
        position_mask = positions < keys_end
        keys_t, values = _load_kv_tile(
            key_cache_ptr, value_cache_ptr, block_table_row, positions, position_mask, kv_head, dims, dim_mask,
            stride_key_block, stride_key_token, stride_key_head,
            stride_value_block, stride_value_token, stride_value_head, BLOCK_SIZE,
        )
        qk = tl.dot(query, keys_t, input_precision=DOT_PRECISION) * qk_scale
        visible = position_mask[None, :] & (positions[None, :] <= query_positions[:, None])
        if USE_WINDOW:
            visible = visible & (positions[None, :] > query_positions[:, None] - sliding_window)
        qk = tl.where(visible, qk, float("-inf"))
        max_so_far, sum_so_far, acc = _online_softmax_step(qk, values, max_so_far, sum_so_far, acc, DOT_PRECISION)

    # Every real query sees at least its own key, so the sum is positive on stored rows.
    out = acc / tl.where(sum_so_far == 0.0, 1.0, sum_so_far)[:, None]
    tl.store(out_ptr + (query_start + rows)[:, None] * stride_out_token + head * stride_out_head + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def paged_decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    *,
    max_context_len: int | None = None,
    num_splits: int | None = None,
    launch: DecodeLaunch | None = None,
) -> torch.Tensor:
    """Attention of one query token per sequence over its cached context.

    query [num_seqs, num_heads, head_dim]; block_tables [num_seqs, max_blocks] (int32
    preferred, padded); context_lens [num_seqs] tokens to attend, including the query's
    own (already cached). Rows with context_len 0 (batch padding) give zeros. With a
    `sliding_window`, only the last `sliding_window` positions (the query's own included)
    are attended.
    `num_splits` > 1 partitions each context across programs and reduces (flash decoding);
    None picks it from `max_context_len` (a host-side upper bound, never read from the
    GPU) and the SM count. The grid depends only on shapes and num_splits, so a fixed
    num_splits makes the launch CUDA-graph capturable. `launch`: tile and Triton launch
    settings (default DECODE_LAUNCH).
    Returns [num_seqs, num_heads, head_dim] in the query's dtype.
    """
    launch = launch or DECODE_LAUNCH
    num_seqs, num_heads, head_dim = _check_common(query, key_cache, value_cache, block_tables, sliding_window)
    _check_index_tensor("context_lens", context_lens, (num_seqs,), query.device)
    if block_tables.shape[0] != num_seqs:
        raise ValueError(f"block_tables has {block_tables.shape[0]} rows for {num_seqs} sequences")
    query = _last_dim_contiguous(query)
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_seqs == 0:
        return out
    num_kv_heads = key_cache.shape[2]
    queries_per_kv = num_heads // num_kv_heads
    if num_splits is None:
        num_splits = _decode_num_splits(num_seqs * num_kv_heads, max_context_len, query.device)
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    partial_out = partial_max = partial_sum = out  # unused placeholders when not splitting
    if num_splits > 1:
        partial_max = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=query.device)
        partial_sum = torch.empty_like(partial_max)
        partial_out = torch.empty((num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32,
                                  device=query.device)
    head_dim_padded = _padded_head_dim(head_dim)
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, key_cache, value_cache, block_tables, context_lens,
        out, partial_out, partial_max, partial_sum,
        scale * _LOG2_E, sliding_window or 0,
        query.stride(0), query.stride(1),
        *key_cache.stride()[:3], *value_cache.stride()[:3],
        block_tables.stride(0), out.stride(0), out.stride(1),
        num_heads,
        QUERIES_PER_KV=queries_per_kv, GROUP_ROWS=max(_MIN_GROUP_ROWS, triton.next_power_of_2(queries_per_kv)),
        HEAD_DIM=head_dim, HEAD_DIM_PADDED=head_dim_padded,
        BLOCK_SIZE=key_cache.shape[1], TILE=launch.tile, NUM_SPLITS=num_splits,
        USE_WINDOW=sliding_window is not None, DOT_PRECISION=_dot_precision(key_cache.dtype),
        **launch.options(),
    )
    if num_splits > 1:
        _decode_reduce_kernel[(num_seqs, num_heads)](
            partial_out, partial_max, partial_sum, out,
            out.stride(0), out.stride(1), num_heads,
            HEAD_DIM=head_dim, HEAD_DIM_PADDED=head_dim_padded,
            NUM_SPLITS=num_splits, SPLITS_PADDED=triton.next_power_of_2(num_splits),
        )
    return out


def paged_prefill_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_query_len: int,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of packed prefill chunks over their cached context and themselves.

    query [num_tokens, num_heads, head_dim], chunks packed back to back; query_start_loc
    [num_seqs + 1] cumulative chunk starts; context_lens [num_seqs] tokens cached before
    each chunk (0 for a fresh prompt). The chunks' own K/V must already be in the cache:
    sequence i reads positions 0 .. context_lens[i] + chunk_len - 1 through block_tables
    [num_seqs, max_blocks]. Query j of a chunk sits at position context_lens[i] + j and
    sees keys at positions <= its own (and > its own - `sliding_window` when set).
    `max_query_len` (a host-side int >= the longest chunk; rows past it are not computed)
    sizes the grid. Returns [num_tokens, num_heads, head_dim] in the query's dtype.
    """
    num_tokens, num_heads, head_dim = _check_common(query, key_cache, value_cache, block_tables, sliding_window)
    num_seqs = block_tables.shape[0]
    _check_index_tensor("query_start_loc", query_start_loc, (num_seqs + 1,), query.device)
    _check_index_tensor("context_lens", context_lens, (num_seqs,), query.device)
    query = _last_dim_contiguous(query)
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_tokens == 0 or num_seqs == 0 or max_query_len <= 0:
        return out
    num_kv_heads = key_cache.shape[2]
    grid = (triton.cdiv(max_query_len, _PREFILL_BLOCK_M), num_seqs, num_heads)
    _prefill_kernel[grid](
        query, key_cache, value_cache, block_tables, query_start_loc, context_lens, out,
        scale * _LOG2_E, sliding_window or 0,
        query.stride(0), query.stride(1),
        *key_cache.stride()[:3], *value_cache.stride()[:3],
        block_tables.stride(0), out.stride(0), out.stride(1),
        QUERIES_PER_KV=num_heads // num_kv_heads,
        HEAD_DIM=head_dim, HEAD_DIM_PADDED=_padded_head_dim(head_dim),
        BLOCK_SIZE=key_cache.shape[1], BLOCK_M=_PREFILL_BLOCK_M, TILE=_PREFILL_TILE,
        USE_WINDOW=sliding_window is not None, DOT_PRECISION=_dot_precision(key_cache.dtype),
    )
    return out


def triton_decode_attention(
    queries: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scaling: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """The AttentionBackend decode signature around paged_decode_attention."""
    return paged_decode_attention(
        queries, key_cache, value_cache, meta.decode_block_tables, meta.decode_context_lens, scaling,
        sliding_window, max_context_len=meta.decode_max_context_len,
    )


def triton_prefill_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scaling: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """The AttentionBackend prefill signature around paged_prefill_attention: every chunk of
    the step in one launch (the chunks' own K/V are read back from the cache)."""
    return paged_prefill_attention(
        queries, key_cache, value_cache, meta.prefill_block_tables, meta.prefill_query_start_loc,
        meta.prefill_context_lens, scaling, meta.max_prefill_query_len, sliding_window,
    )


TRITON_BACKEND = AttentionBackend("triton", triton_decode_attention, triton_prefill_attention, packed_prefill=True)


def interpreter_active() -> bool:
    """Whether this process runs Triton kernels in its CPU interpreter (TRITON_INTERPRET=1 was
    set before triton was first imported: triton.language's own functions are wrapped then)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.sum, InterpretedFunction)


def _check_common(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    sliding_window: int | None,
) -> tuple[int, int, int]:
    """Validate what both kernels share (shapes and dtypes only: no device sync)."""
    if query.dim() != 3:
        raise ValueError(f"query must be [tokens, num_heads, head_dim], got shape {tuple(query.shape)}")
    if key_cache.dim() != 4 or key_cache.shape != value_cache.shape:
        raise ValueError(
            "key_cache and value_cache must both be [num_blocks, block_size, num_kv_heads, head_dim], "
            f"got {tuple(key_cache.shape)} and {tuple(value_cache.shape)}"
        )
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key_cache.shape[2]
    if key_cache.shape[3] != head_dim:
        raise ValueError(f"query head_dim {head_dim} != cache head_dim {key_cache.shape[3]}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if not query.dtype == key_cache.dtype == value_cache.dtype:
        raise ValueError(
            f"query and caches must share a dtype, got {query.dtype}, {key_cache.dtype} and {value_cache.dtype}"
        )
    if key_cache.stride(-1) != 1 or value_cache.stride(-1) != 1:
        raise ValueError("key_cache and value_cache need a contiguous head_dim")
    if key_cache.device != query.device or value_cache.device != query.device:
        raise ValueError("query and caches must be on the same device")
    if block_tables.dim() != 2:
        raise ValueError(f"block_tables must be [num_seqs, max_blocks], got shape {tuple(block_tables.shape)}")
    _check_index_tensor("block_tables", block_tables, None, query.device)
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    return num_tokens, num_heads, head_dim


def _check_index_tensor(
    name: str, tensor: torch.Tensor, shape: tuple[int, ...] | None, device: torch.device
) -> None:
    if shape is not None and tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if tensor.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {tensor.dtype}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device}, query on {device}")
    if tensor.dim() and tensor.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension")


def _last_dim_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    # The kernels address head_dim with unit stride; other strides are passed through.
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _padded_head_dim(head_dim: int) -> int:
    # Power-of-two tiles (and K >= 16 for tl.dot); masks cover head dims like 80 or 96.
    return max(16, triton.next_power_of_2(head_dim))


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 caches are for exactness: tf32 tensor cores would cost ~1e-3 relative error.
    # The setting has no effect on fp16/bf16 operands.
    return "ieee" if dtype == torch.float32 else "tf32"


def _decode_num_splits(num_programs: int, max_context_len: int | None, device: torch.device) -> int:
    """decode_num_splits for `device`; 1 off CUDA or without a bound on the context length."""
    if max_context_len is None or device.type != "cuda":
        return 1
    num_sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return decode_num_splits(num_programs, max_context_len, num_sms)


def decode_num_splits(num_programs: int, max_context_len: int, num_sms: int) -> int:
    """Programs sharing each (sequence, KV head)'s keys in the decode kernel (flash decoding).

    Enough splits that DECODE_PROGRAMS_PER_SM programs per SM are in flight (a decode program
    streams its keys one tile at a time, so an SM needs several at once to keep memory busy), but
    never below _MIN_KEYS_PER_SPLIT keys a split (of `max_context_len`) nor above _MAX_SPLITS. A
    batch that already has that many programs gains nothing from splitting and would pay for the
    partials and their reduction. A CUDA graph sizes this per captured batch size with
    `max_context_len` = max_model_len: a shorter context leaves trailing splits empty."""
    target = DECODE_PROGRAMS_PER_SM * num_sms
    if num_programs >= target:
        return 1
    by_occupancy = math.ceil(target / num_programs)
    by_length = math.ceil(max_context_len / _MIN_KEYS_PER_SPLIT)
    return max(1, min(by_occupancy, by_length, _MAX_SPLITS))


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count
