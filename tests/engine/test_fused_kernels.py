"""The fused Triton kernels of the llama-family forward (RMSNorm with and without the residual
add, SiLU-and-mul, RoPE with Qwen3's head norms) against the torch path they replace: compiled
on CUDA when there is a GPU, otherwise under Triton's CPU interpreter (tiny shapes)."""

from __future__ import annotations

import functools

import pytest
import torch
import transformers

from .triton_interpreter import ON_CUDA, needs_kernels, rerun_in_fresh_process, runs_in_fresh_process

# After .triton_interpreter, which must set up the interpreter before triton is imported.
from runtime.engine.kernels import add_rms_norm, rms_norm, rotary_embedding, silu_and_mul
from runtime.engine.models.fused_layer_ops import FusedLayerOps

from . import layer_ops_cases
from .layer_ops_cases import (
    DYNAMIC_ROPE,
    EPS,
    LLAMA3_ROPE,
    MAX_POSITIONS,
    TORCH_OPS,
    assert_add_rms_norm_matches_torch_in_place,
    assert_close,
    assert_rotation_matches_torch,
    rotary,
)

DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16] if ON_CUDA else [torch.float32, torch.bfloat16]
TOKEN_COUNTS = [1, 7]
random = functools.partial(layer_ops_cases.random, device=DEVICE)


@runs_in_fresh_process
def test_kernels_in_a_fresh_interpreter_process():
    rerun_in_fresh_process(__file__)


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
    assert_add_rms_norm_matches_torch_in_place(
        lambda hidden, residual, norm: add_rms_norm(hidden, residual, *norm), hidden_size, num_tokens, dtype, DEVICE
    )


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


def fused_ops(rotary_emb, dtype=torch.float32, hidden_act="silu"):
    return FusedLayerOps(rotary_emb, MAX_POSITIONS, dtype, hidden_act)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKEN_COUNTS)
@pytest.mark.parametrize("head_dim", [16, 24])  # 24: half a head is not a power of two
@pytest.mark.parametrize("with_head_norms", [False, True])
def test_rotary_matches_torch_in_place(with_head_norms, head_dim, num_tokens, dtype):
    head_norms = None
    if with_head_norms:
        head_norms = ((random(head_dim, dtype=dtype, seed=4), EPS), (random(head_dim, dtype=dtype, seed=5), 1e-5))
    assert_rotation_matches_torch(fused_ops(rotary(head_dim, device=DEVICE), dtype), num_tokens, 4, 2, head_dim, dtype,
                                  head_norms)


@needs_kernels
def test_rotary_with_llama3_scaling_matches_torch():
    assert_rotation_matches_torch(fused_ops(rotary(16, LLAMA3_ROPE, DEVICE)), 5, 4, 1, 16, torch.float32, None)


@needs_kernels
def test_rope_that_reads_the_batch_keeps_torchs_rotation():
    ops = fused_ops(rotary(16, DYNAMIC_ROPE, DEVICE))
    assert ops.cos_sin_tables is None
    assert_rotation_matches_torch(ops, 5, 4, 2, 16, torch.float32, None)


def test_activations_other_than_silu_keep_torchs():
    ops = fused_ops(rotary(16, device=DEVICE), hidden_act="gelu_pytorch_tanh")
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
