"""What the fused layer ops (Triton's, test_fused_kernels.py; the CPU's C++ ones,
test_cpu_layer_ops.py) are checked with: their inputs, and the comparison with TorchLayerOps."""

from __future__ import annotations

import torch
import transformers

from runtime.engine.models.layer_ops import TableRopeLayerOps, TorchLayerOps

EPS = 1e-6
MAX_POSITIONS = 64
# float32: summation order and fused multiply-adds. Half precision: the fused RoPE rounds once where
# torch rounds three times, and the Triton interpreter rounds casts toward zero.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
TORCH_OPS = TorchLayerOps(rotary_emb=None)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 10000.0}
DYNAMIC_ROPE = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}


def random(*shape, dtype, seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(dtype).to(device)


def assert_close(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    tolerance = TOLERANCE[expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=tolerance, rtol=tolerance)


def assert_add_rms_norm_matches_torch_in_place(add_rms_norm, hidden_size, num_tokens, dtype, device="cpu"):
    """add_rms_norm(hidden, residual, (weight, eps)) -> (normed, summed), both in place."""
    hidden = random(num_tokens, hidden_size, dtype=dtype, device=device)
    residual = random(num_tokens, hidden_size, dtype=dtype, seed=1, device=device)
    weight = random(hidden_size, dtype=dtype, seed=2, device=device)
    expected_normed, expected_residual = TORCH_OPS.add_rms_norm(hidden, residual, (weight, EPS))
    normed, summed = add_rms_norm(hidden, residual, (weight, EPS))
    assert normed.data_ptr() == hidden.data_ptr() and summed.data_ptr() == residual.data_ptr()
    assert_close(summed, expected_residual)
    assert_close(normed, expected_normed)


def rotary(head_dim, rope_parameters=None, device="cpu"):
    extra = {} if rope_parameters is None else {"rope_parameters": rope_parameters}
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=64 // head_dim, head_dim=head_dim,
                                      max_position_embeddings=MAX_POSITIONS, **extra)
    return transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config).to(device)


def fused_qkv(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device="cpu"):
    """Views of queries and keys into one [tokens, (heads + 2 * kv_heads) * head_dim] output, as
    the layer has them, and that output."""
    qkv = random(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, device=device)
    queries = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    keys = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(num_tokens, num_kv_heads, head_dim)
    return qkv, queries, keys


def assert_rotation_matches_torch(ops: TableRopeLayerOps, num_tokens, num_heads, num_kv_heads, head_dim, dtype,
                                  head_norms):
    """`ops` rotates the views of a fused QKV output in place (where it has a table) as torch's
    ops rotate copies, at positions up to the table's last, and leaves the values alone."""
    device = ops.rotary_emb.inv_freq.device
    torch_ops = TorchLayerOps(ops.rotary_emb)
    qkv, queries, keys = fused_qkv(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device)
    positions = torch.randint(MAX_POSITIONS, (num_tokens,), generator=torch.Generator().manual_seed(3)).to(device)
    positions[0] = MAX_POSITIONS - 1
    values_before = qkv[:, (num_heads + num_kv_heads) * head_dim :].clone()
    expected_queries, expected_keys = torch_ops.rotate(
        queries.clone(), keys.clone(), torch_ops.rope_for_step(qkv, positions), head_norms
    )
    rotated_queries, rotated_keys = ops.rotate(queries, keys, ops.rope_for_step(qkv, positions), head_norms)
    if ops.cos_sin_tables is not None:
        assert rotated_queries.data_ptr() == queries.data_ptr() and rotated_keys.data_ptr() == keys.data_ptr()
    assert_close(rotated_queries, expected_queries)
    assert_close(rotated_keys, expected_keys)
    assert torch.equal(qkv[:, (num_heads + num_kv_heads) * head_dim :], values_before), "values must stay as they were"
