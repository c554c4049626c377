"""Triton paged attention kernels against a plain-torch reference: compiled on CUDA when
there is a GPU, otherwise under Triton's CPU interpreter (fp32 only, small shapes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from .triton_interpreter import ON_CUDA, needs_kernels, rerun_in_fresh_process, runs_in_fresh_process

# After .triton_interpreter, which must set up the interpreter before triton is imported.
from runtime.engine.attention import triton_backend as backend

DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16] if ON_CUDA else [torch.float32]
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
GQA = [(2, 2), (4, 2), (8, 2)]  # (num_heads, num_kv_heads): group sizes 1, 2, 4
CONTEXT_LENS = [1, 15, 16, 17, 100]


@runs_in_fresh_process
def test_kernels_in_a_fresh_interpreter_process():
    rerun_in_fresh_process(__file__)


def make_paged_cache(seq_lens, block_size, num_kv_heads, head_dim, dtype, generator, table_dtype=torch.int32):
    """Random K/V for sequences of `seq_lens` tokens in shuffled, non-contiguous blocks.
    Every slot no sequence owns (block 0, which pads the tables, and the tails of last
    pages) holds NaN, so a kernel that reads past a sequence poisons its output."""
    blocks_needed = [-(-length // block_size) for length in seq_lens]
    num_blocks = 1 + sum(blocks_needed) + 3
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.full(shape, float("nan"), dtype=dtype)
    value_cache = torch.full(shape, float("nan"), dtype=dtype)
    block_ids = (torch.randperm(num_blocks - 1, generator=generator) + 1).tolist()
    block_tables = torch.zeros((len(seq_lens), max(blocks_needed)), dtype=table_dtype)
    for row, (length, count) in enumerate(zip(seq_lens, blocks_needed)):
        table = [block_ids.pop() for _ in range(count)]
        block_tables[row, :count] = torch.tensor(table)
        for position in range(length):
            block, offset = table[position // block_size], position % block_size
            key_cache[block, offset] = torch.randn((num_kv_heads, head_dim), generator=generator).to(dtype)
            value_cache[block, offset] = torch.randn((num_kv_heads, head_dim), generator=generator).to(dtype)
    return key_cache.to(DEVICE), value_cache.to(DEVICE), block_tables.to(DEVICE)


def reference_attention(query, key_cache, value_cache, block_table, query_positions, total_len, scale, sliding_window):
    """One sequence in fp32: queries [n, heads, head_dim] at `query_positions` over the
    keys at positions 0 .. total_len - 1, causal and optionally windowed."""
    block_size = key_cache.shape[1]
    positions = torch.arange(total_len, device=query.device)
    slots = block_table[positions // block_size].long() * block_size + positions % block_size
    groups = query.shape[1] // key_cache.shape[2]
    keys = key_cache.flatten(0, 1)[slots].float().transpose(0, 1).repeat_interleave(groups, dim=0)
    values = value_cache.flatten(0, 1)[slots].float().transpose(0, 1).repeat_interleave(groups, dim=0)
    visible = positions[None, :] <= query_positions[:, None]
    if sliding_window is not None:
        visible &= positions[None, :] > query_positions[:, None] - sliding_window
    out = F.scaled_dot_product_attention(query.float().transpose(0, 1), keys, values, attn_mask=visible, scale=scale)
    return out.transpose(0, 1)


def reference_decode(query, key_cache, value_cache, block_tables, context_lens, scale, sliding_window=None):
    rows = []
    for row, length in enumerate(context_lens.tolist()):
        positions = torch.tensor([length - 1], device=query.device)
        rows.append(reference_attention(query[row : row + 1], key_cache, value_cache, block_tables[row], positions,
                                        length, scale, sliding_window))
    return torch.cat(rows)


def reference_prefill(query, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale,
                      sliding_window=None):
    starts = query_start_loc.tolist()
    rows = []
    for seq, num_context in enumerate(context_lens.tolist()):
        chunk = query[starts[seq] : starts[seq + 1]]
        positions = num_context + torch.arange(chunk.shape[0], device=query.device)
        rows.append(reference_attention(chunk, key_cache, value_cache, block_tables[seq], positions,
                                        num_context + chunk.shape[0], scale, sliding_window))
    return torch.cat(rows)


def assert_close(actual, expected, dtype):
    assert actual.dtype == dtype
    assert not actual.isnan().any()
    torch.testing.assert_close(actual.float(), expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def run_decode(context_lens, block_size, num_heads, num_kv_heads, head_dim, dtype, sliding_window=None,
               num_splits=None, table_dtype=torch.int32, seed=0, launch=None):
    generator = torch.Generator().manual_seed(seed)
    key_cache, value_cache, block_tables = make_paged_cache(context_lens, block_size, num_kv_heads, head_dim, dtype,
                                                            generator, table_dtype)
    query = torch.randn((len(context_lens), num_heads, head_dim), generator=generator).to(dtype).to(DEVICE)
    lens = torch.tensor(context_lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5
    out = backend.paged_decode_attention(query, key_cache, value_cache, block_tables, lens, scale, sliding_window,
                                         max_context_len=max(context_lens), num_splits=num_splits, launch=launch)
    expected = reference_decode(query, key_cache, value_cache, block_tables, lens, scale, sliding_window)
    assert_close(out, expected, dtype)


def run_prefill(chunks, block_size, num_heads, num_kv_heads, head_dim, dtype, sliding_window=None, seed=0):
    """chunks: (tokens already cached, chunk length) per sequence."""
    generator = torch.Generator().manual_seed(seed)
    seq_lens = [num_context + query_len for num_context, query_len in chunks]
    key_cache, value_cache, block_tables = make_paged_cache(seq_lens, block_size, num_kv_heads, head_dim, dtype,
                                                            generator)
    query_lens = [query_len for _, query_len in chunks]
    query = torch.randn((sum(query_lens), num_heads, head_dim), generator=generator).to(dtype).to(DEVICE)
    query_start_loc = torch.tensor([0] + query_lens, dtype=torch.int32).cumsum(0).to(torch.int32).to(DEVICE)
    context_lens = torch.tensor([num_context for num_context, _ in chunks], dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5
    out = backend.paged_prefill_attention(query, key_cache, value_cache, block_tables, query_start_loc, context_lens,
                                          scale, max(query_lens), sliding_window)
    expected = reference_prefill(query, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale,
                                 sliding_window)
    assert_close(out, expected, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sliding_window", [None, 8])
@pytest.mark.parametrize("num_heads,num_kv_heads", GQA)
@pytest.mark.parametrize("block_size", [16, 8])
def test_decode_matches_reference(block_size, num_heads, num_kv_heads, sliding_window, dtype):
    run_decode(CONTEXT_LENS, block_size, num_heads, num_kv_heads, 32, dtype, sliding_window)


@needs_kernels
@pytest.mark.parametrize("sliding_window", [None, 40])
def test_decode_split_across_programs_matches_reference(sliding_window):
    # Three splits of whole 64-key tiles: the 100-token context fills two and leaves the
    # third empty; shorter contexts leave two empty.
    run_decode(CONTEXT_LENS, 16, 4, 2, 32, torch.float32, sliding_window, num_splits=3)


@needs_kernels
@pytest.mark.parametrize("launch", ["16:2:1", "32", "128:8:2"])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_launch_settings_keep_the_result(launch, num_splits):
    """Every tile size splits the context into whole tiles, across pages and splits alike."""
    run_decode(CONTEXT_LENS, 16, 8, 2, 32, torch.float32, sliding_window=8 if num_splits == 1 else None,
               num_splits=num_splits, launch=backend.DecodeLaunch.parse(launch))


def test_decode_launch_parses_and_refuses_what_triton_cannot_run():
    assert backend.DecodeLaunch.parse("64") == backend.DecodeLaunch(64)
    assert backend.DecodeLaunch.parse("128:8:2") == backend.DecodeLaunch(128, 8, 2)
    assert backend.DecodeLaunch.parse("32::1") == backend.DecodeLaunch(32, None, 1)
    assert backend.DecodeLaunch(32, None, 1).options() == {"num_stages": 1}
    assert str(backend.DecodeLaunch(128, 8, 2)) == "128:8:2" and str(backend.DecodeLaunch()) == "64"
    for text, message in [("48", "power of two >= 16"), ("8", "power of two >= 16"),
                          ("64:x", r"TILE\[:WARPS\[:STAGES\]\] in whole numbers"), ("1:2:3:4", "TILE")]:
        with pytest.raises(ValueError, match=message):
            backend.DecodeLaunch.parse(text)


# Llama-3-8B (8 KV heads) on an H200 (132 SMs) with max_model_len 8192, as a decode graph sizes it:
# 4 programs per SM (528) is the target.
@pytest.mark.parametrize("batch, splits", [(1, 16), (8, 9), (16, 5), (33, 2), (64, 2), (66, 1), (256, 1)])
def test_decode_splits_only_batches_that_leave_sms_idle(batch, splits):
    assert backend.decode_num_splits(batch * 8, 8192, num_sms=132) == splits


def test_decode_splits_keep_enough_keys_each():
    assert backend.decode_num_splits(8, 300, num_sms=132) == 2
    assert backend.decode_num_splits(8, 1, num_sms=132) == 1


@needs_kernels
def test_decode_split_for_the_longest_context_serves_short_ones():
    """A graph's split count is fixed for max_model_len: every shorter context leaves most
    splits empty and must still come out exact."""
    num_splits = backend.decode_num_splits(len(CONTEXT_LENS) * 2, 4096, num_sms=132)
    assert num_splits == backend._MAX_SPLITS
    run_decode(CONTEXT_LENS, 16, 4, 2, 32, torch.float32, num_splits=num_splits)


@needs_kernels
def test_decode_head_dim_64_and_int64_block_tables():
    run_decode(CONTEXT_LENS, 16, 8, 2, 64, torch.float32, table_dtype=torch.int64)


@needs_kernels
def test_decode_head_dim_not_a_power_of_two():
    run_decode([3, 40], 16, 4, 2, 48, torch.float32)


@needs_kernels
def test_decode_padding_rows_give_zeros():
    """A context length of 0 marks a padding row (fixed-size batches for CUDA graphs)."""
    generator = torch.Generator().manual_seed(0)
    key_cache, value_cache, block_tables = make_paged_cache([5, 5], 16, 2, 32, torch.float32, generator)
    query = torch.randn((2, 4, 32), generator=generator).to(DEVICE)
    lens = torch.tensor([5, 0], dtype=torch.int32, device=DEVICE)
    for num_splits in (1, 2):
        out = backend.paged_decode_attention(query, key_cache, value_cache, block_tables, lens, 0.2,
                                             num_splits=num_splits)
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        expected = reference_decode(query[:1], key_cache, value_cache, block_tables[:1], lens[:1], 0.2)
        assert_close(out[:1], expected, torch.float32)


# (tokens already cached, chunk length): fresh prompts, one longer than a 64-query tile,
# chunks after cached context (page-aligned or not), and single-token chunks.
PREFILL_CHUNKS = [(0, 17), (16, 20), (37, 1), (0, 1), (5, 100)]


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sliding_window", [None, 8])
@pytest.mark.parametrize("num_heads,num_kv_heads", GQA)
@pytest.mark.parametrize("block_size", [16, 8])
def test_prefill_matches_reference(block_size, num_heads, num_kv_heads, sliding_window, dtype):
    run_prefill(PREFILL_CHUNKS, block_size, num_heads, num_kv_heads, 32, dtype, sliding_window)


@needs_kernels
def test_prefill_fresh_prompts_head_dim_64():
    run_prefill([(0, 15), (0, 16), (0, 70)], 16, 4, 2, 64, torch.float32)


@needs_kernels
def test_prefill_window_wider_than_a_query_tile():
    run_prefill([(30, 90), (0, 3)], 8, 4, 4, 32, torch.float32, sliding_window=70)


def test_mismatched_heads_raise_a_clear_error():
    cache = torch.zeros((2, 16, 3, 32), device=DEVICE)
    query = torch.zeros((1, 4, 32), device=DEVICE)
    tables = torch.zeros((1, 1), dtype=torch.int32, device=DEVICE)
    lens = torch.ones(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        backend.paged_decode_attention(query, cache, cache, tables, lens, 1.0)
