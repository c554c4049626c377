"""The fused Triton kernels of the llama-family forward (RMSNorm with and without the residual
add, SiLU-and-mul, RoPE with Qwen3's head norms) against the torch path they replace: compiled
on CUDA when there is a GPU, otherwise under Triton's CPU interpreter (tiny shapes)."""

from __future__ import annotations

import pytest
import torch
import transformers

from .triton_interpreter import ON_CUDA, needs_kernels, rerun_in_fresh_process, runs_in_fresh_process

# After .triton_interpreter, which must set up the interpreter before triton is imported.
from runtime.engine.kernels import add_rms_norm, rms_norm, rotary_embedding, silu_and_mul
from runtime.engine.models.fused_layer_ops import FusedLayerOps
from runtime.engine.models.layer_ops import TorchLayerOps

DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16] if ON_CUDA else [torch.float32, torch.bfloat16]
# bfloat16 gets about two units in the last place: the interpreter rounds casts toward zero.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
TOKEN_COUNTS = [1, 7]
EPS = 1e-6
TORCH_OPS = TorchLayerOps(rotary_emb=None)
MAX_POSITIONS = 64


@runs_in_fresh_process
def test_kernels_in_a_fresh_interpreter_process():
    rerun_in_fresh_process(__file__)


def random(*shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(dtype).to(DEVICE)


def assert_close(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    tolerance = TOLERANCE[expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=tolerance, rtol=tolerance)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKEN_COUNTS)
@pytest.mark.parametrize("hidden_size", [64, 67])
def test_rms_norm_matches_torch(hidden_size, num_tokens, dtype):
    hidden, weight = random(num_tokens, hidden_size, dtype=dtype), random(hidden_size, dtype=dtype, seed=1)
    assert_close(rms_norm(hidden, weight, EPS), TORCH_OPS.rms_norm(hidden, (weight, EPS)))


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKEN_COUNTS)
@pytest.mark.parametrize("hidden_size", [64, 67])
def test_add_rms_norm_matches_torch_in_place(hidden_size, num_tokens, dtype):
    hidden = random(num_tokens, hidden_size, dtype=dtype)
    residual = random(num_tokens, hidden_size, dtype=dtype, seed=1)
    weight = random(hidden_size, dtype=dtype, seed=2)
    expected_normed, expected_residual = TORCH_OPS.add_rms_norm(hidden, residual, (weight, EPS))
    normed, summed = add_rms_norm(hidden, residual, weight, EPS)
    assert normed.data_ptr() == hidden.data_ptr() and summed.data_ptr() == residual.data_ptr()
    assert_close(summed, expected_residual)
    assert_close(normed, expected_normed)


@needs_kernels
def test_rms_norm_of_heads_inside_a_wider_row():
    """Per-head norms of a [tokens, heads, head_dim] view into the QKV output (Qwen3 under a RoPE
    the fused kernel does not take): the norm runs on a copy, the view is left alone."""
    qkv = random(3, 5 * 16, dtype=torch.float32)
    queries = qkv[:, : 3 * 16].view(3, 3, 16)
    weight = random(16, dtype=torch.float32, seed=1)
    before = qkv.clone()
    assert_close(rms_norm(queries, weight, EPS), TORCH_OPS.rms_norm(queries, (weight, EPS)))
    assert torch.equal(qkv, before)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKEN_COUNTS)
@pytest.mark.parametrize("intermediate_size", [45, 1100])  # one column block, and two with a ragged end
def test_silu_and_mul_matches_torch(intermediate_size, num_tokens, dtype):
    gate_up = random(num_tokens, 2 * intermediate_size, dtype=dtype) * 4
    assert_close(silu_and_mul(gate_up), TORCH_OPS.gated_activation(torch.nn.SiLU(), gate_up))


def rotary(head_dim, rope_parameters=None):
    extra = {} if rope_parameters is None else {"rope_parameters": rope_parameters}
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=64 // head_dim, head_dim=head_dim,
                                      max_position_embeddings=MAX_POSITIONS, **extra)
    return transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config).to(DEVICE)


def fused_qkv(num_tokens, num_heads, num_kv_heads, head_dim, dtype):
    """Views of queries and keys into one [tokens, (heads + 2 * kv_heads) * head_dim] output, as
    the layer has them, and that output."""
    qkv = random(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    queries = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    keys = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(num_tokens, num_kv_heads, head_dim)
    return qkv, queries, keys


def assert_rotation_matches_torch(rotary_emb, num_tokens, num_heads, num_kv_heads, head_dim, dtype, head_norms):
    fused_ops = FusedLayerOps(rotary_emb, MAX_POSITIONS, dtype, "silu")
    torch_ops = TorchLayerOps(rotary_emb)
    qkv, queries, keys = fused_qkv(num_tokens, num_heads, num_kv_heads, head_dim, dtype)
    positions = torch.randperm(MAX_POSITIONS, generator=torch.Generator().manual_seed(3))[:num_tokens].to(DEVICE)
    positions[0] = MAX_POSITIONS - 1
    values_before = qkv[:, (num_heads + num_kv_heads) * head_dim :].clone()
    expected_queries, expected_keys = torch_ops.rotate(
        queries.clone(), keys.clone(), torch_ops.rope_for_step(qkv, positions), head_norms
    )
    rotated_queries, rotated_keys = fused_ops.rotate(queries, keys, fused_ops.rope_for_step(qkv, positions), head_norms)
    assert_close(rotated_queries, expected_queries)
    assert_close(rotated_keys, expected_keys)
    assert torch.equal(qkv[:, (num_heads + num_kv_heads) * head_dim :], values_before), "values must stay as they were"


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKEN_COUNTS)
@pytest.mark.parametrize("head_dim", [16, 24])  # 24: half a head is not a power of two
@pytest.mark.parametrize("with_head_norms", [False, True])
def test_rotary_matches_torch_in_place(with_head_norms, head_dim, num_tokens, dtype):
    head_norms = None
    if with_head_norms:
        head_norms = ((random(head_dim, dtype=dtype, seed=4), EPS), (random(head_dim, dtype=dtype, seed=5), 1e-5))
    assert_rotation_matches_torch(rotary(head_dim), num_tokens, 4, 2, head_dim, dtype, head_norms)


@needs_kernels
def test_rotary_with_llama3_scaling_matches_torch():
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16, "rope_theta": 10000.0}
    assert_rotation_matches_torch(rotary(16, rope), 5, 4, 1, 16, torch.float32, None)


@needs_kernels
def test_rope_that_reads_the_batch_keeps_torchs_rotation():
    rotary_emb = rotary(16, {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    assert FusedLayerOps(rotary_emb, MAX_POSITIONS, torch.float32, "silu").cos_sin_tables is None
    assert_rotation_matches_torch(rotary_emb, 5, 4, 2, 16, torch.float32, None)


def test_activations_other_than_silu_keep_torchs():
    ops = FusedLayerOps(rotary(16), MAX_POSITIONS, torch.float32, "gelu_pytorch_tanh")
    gate_up = random(3, 2 * 8, dtype=torch.float32)
    act_fn = transformers.activations.ACT2FN["gelu_pytorch_tanh"]
    assert torch.equal(ops.gated_activation(act_fn, gate_up), TORCH_OPS.gated_activation(act_fn, gate_up))


def test_mismatched_shapes_raise_clear_errors():
    hidden = torch.zeros((2, 8), device=DEVICE)
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm(hidden, torch.zeros(4, device=DEVICE), EPS)
    with pytest.raises(ValueError, match="must both be"):
        add_rms_norm(hidden, torch.zeros((3, 8), device=DEVICE), torch.zeros(8, device=DEVICE), EPS)
    with pytest.raises(ValueError, match="2 \\* intermediate"):
        silu_and_mul(torch.zeros((2, 7), device=DEVICE))
    table = torch.zeros((4, 6), device=DEVICE)
    with pytest.raises(ValueError, match="cos/sin tables"):
        rotary_embedding(torch.zeros((1, 2, 8), device=DEVICE), torch.zeros((1, 1, 8), device=DEVICE),
                         torch.zeros(1, dtype=torch.long, device=DEVICE), table, table)
