"""The C++ CPU decode-attention kernel against the torch backend (gather + SDPA)."""

from __future__ import annotations

import pytest
import torch

from runtime.engine.attention import AttentionMetadata
from runtime.engine.attention.cpu_kernels import CPP_BACKEND, cpp_decode_attention, load_decode_kernel
from runtime.engine.attention.torch_backend import torch_decode_attention

pytestmark = pytest.mark.skipif(load_decode_kernel() is None, reason="no C++ toolchain to build the kernel")


def decode_metadata(context_lens: list[int], block_size: int, num_blocks: int, generator) -> AttentionMetadata:
    """Random, non-contiguous block tables for rows of the given context lengths."""
    needed = [-(-length // block_size) for length in context_lens]
    max_blocks = max(needed)
    free = torch.randperm(num_blocks, generator=generator).tolist()
    tables = [[free.pop() for _ in range(count)] + [0] * (max_blocks - count) for count in needed]
    lens = torch.tensor(context_lens)
    positions = torch.arange(max_blocks * block_size)
    return AttentionMetadata(
        kv_caches=[],
        slot_mapping=torch.empty(0, dtype=torch.long),
        num_decode_tokens=len(context_lens),
        decode_block_tables=torch.tensor(tables),
        decode_mask=(positions.unsqueeze(0) < lens.unsqueeze(1)).view(len(context_lens), 1, 1, -1),
        decode_context_lens=lens,
        prefills=[],
        decode_max_context_len=max(context_lens),
        backend=CPP_BACKEND,
    )


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("sliding_window", [None, 5, 40])
@pytest.mark.parametrize("block_size", [4, 16])
def test_kernel_matches_the_torch_backend(num_heads, num_kv_heads, sliding_window, block_size):
    generator = torch.Generator().manual_seed(num_heads * 100 + block_size)
    head_dim, num_blocks = 32, 64
    context_lens = [1, 3, block_size, block_size + 1, 37, 90]
    meta = decode_metadata(context_lens, block_size, num_blocks, generator)
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=generator)
    value_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=generator)
    queries = torch.randn(len(context_lens), num_heads, head_dim, generator=generator)
    scale = head_dim**-0.5
    expected = torch_decode_attention(queries, key_cache, value_cache, meta, scale, sliding_window)
    actual = cpp_decode_attention(queries, key_cache, value_cache, meta, scale, sliding_window)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_kernel_ignores_what_lies_past_each_context():
    """Unused slots (block padding, the tail of a last page) never leak into the output."""
    generator = torch.Generator().manual_seed(7)
    meta = decode_metadata([5, 20], block_size=8, num_blocks=16, generator=generator)
    key_cache = torch.randn(16, 8, 2, 16, generator=generator)
    value_cache = torch.randn(16, 8, 2, 16, generator=generator)
    queries = torch.randn(2, 4, 16, generator=generator)
    before = cpp_decode_attention(queries, key_cache, value_cache, meta, 0.25, None)
    poisoned_keys, poisoned_values = key_cache.clone(), value_cache.clone()
    for row, length in enumerate([5, 20]):
        table = meta.decode_block_tables[row]
        for position in range(length, table.numel() * 8):
            block = table[position // 8]
            if position // 8 < -(-length // 8):
                poisoned_keys[block, position % 8] = 1e6
                poisoned_values[block, position % 8] = 1e6
    after = cpp_decode_attention(queries, poisoned_keys, poisoned_values, meta, 0.25, None)
    torch.testing.assert_close(after, before)
