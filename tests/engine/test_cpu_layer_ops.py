"""The C++ CPU layer ops (norms, SiLU x up, RoPE) against TorchLayerOps, and the runner choosing
them on the CPU where the extension builds."""

from __future__ import annotations

import pytest
import torch
import transformers

from runtime.engine import EngineConfig, LLMEngine, SamplingParams
from runtime.engine.cpu_extensions import CPU_KERNELS_ENV
from runtime.engine.models.cpu_layer_ops import CpuFusedLayerOps, load_layer_ops_kernel
from runtime.engine.models.gemma3 import Gemma3Forward
from runtime.engine.models.layer_ops import TorchLayerOps

from .layer_ops_cases import (
    DYNAMIC_ROPE,
    EPS,
    LLAMA3_ROPE,
    MAX_POSITIONS,
    TOLERANCE,
    TORCH_OPS,
    assert_add_rms_norm_matches_torch_in_place,
    assert_close,
    assert_rotation_matches_torch,
    fused_qkv,
    random,
    rotary,
)

needs_kernel = pytest.mark.skipif(load_layer_ops_kernel() is None, reason="no C++ toolchain to build the kernel")

DTYPES = [torch.float32, torch.bfloat16]
TOKEN_COUNTS = [1, 3, 17, 300]


def cpu_ops(rotary_emb=None, dtype=torch.float32, hidden_act="silu"):
    return CpuFusedLayerOps(load_layer_ops_kernel(), rotary_emb or rotary(16), MAX_POSITIONS, dtype, hidden_act)


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKEN_COUNTS)
@pytest.mark.parametrize("hidden_size", [64, 67])
def test_rms_norm_matches_torch(hidden_size, num_tokens, dtype):
    hidden, weight = random(num_tokens, hidden_size, dtype=dtype), random(hidden_size, dtype=dtype, seed=1)
    assert_close(cpu_ops(dtype=dtype).rms_norm(hidden, (weight, EPS)), TORCH_OPS.rms_norm(hidden, (weight, EPS)))


@needs_kernel
def test_rms_norm_of_heads_inside_a_wider_row_leaves_the_row_alone():
    qkv = random(3, 5 * 16, dtype=torch.float32)
    queries = qkv[:, : 3 * 16].view(3, 3, 16)
    weight = random(16, dtype=torch.float32, seed=1)
    before = qkv.clone()
    assert_close(cpu_ops().rms_norm(queries, (weight, EPS)), TORCH_OPS.rms_norm(queries, (weight, EPS)))
    assert torch.equal(qkv, before)


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKEN_COUNTS)
@pytest.mark.parametrize("hidden_size", [64, 67])
def test_add_rms_norm_matches_torch_in_place(hidden_size, num_tokens, dtype):
    assert_add_rms_norm_matches_torch_in_place(cpu_ops(dtype=dtype).add_rms_norm, hidden_size, num_tokens, dtype)


@needs_kernel
def test_add_rms_norm_of_column_major_rows_matches_torch():
    """CpuLinear's bfloat16 products at several rows come back column-major."""
    hidden = random(64, 5, dtype=torch.float32).t()
    residual, weight = random(5, 64, dtype=torch.float32, seed=1), random(64, dtype=torch.float32, seed=2)
    expected_normed, expected_residual = TORCH_OPS.add_rms_norm(hidden, residual, (weight, EPS))
    normed, summed = cpu_ops().add_rms_norm(hidden, residual.clone(), (weight, EPS))
    assert_close(summed, expected_residual)
    assert_close(normed, expected_normed)


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKEN_COUNTS)
@pytest.mark.parametrize("intermediate_size", [45, 1376])
def test_silu_and_mul_matches_torch(intermediate_size, num_tokens, dtype):
    gate_up = random(num_tokens, 2 * intermediate_size, dtype=dtype) * 4
    # Relative to the products' size (up to ~100 here): float32's exp differs from torch's in the last places.
    expected = TORCH_OPS.gated_activation(torch.nn.SiLU(), gate_up)
    actual = cpu_ops(dtype=dtype).gated_activation(torch.nn.SiLU(), gate_up)
    torch.testing.assert_close(actual.float(), expected.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKEN_COUNTS)
@pytest.mark.parametrize("head_dim", [16, 24, 64])
@pytest.mark.parametrize("with_head_norms", [False, True])
def test_rotary_matches_torch_in_place(with_head_norms, head_dim, num_tokens, dtype):
    head_norms = None
    if with_head_norms:
        head_norms = ((random(head_dim, dtype=dtype, seed=4), EPS), (random(head_dim, dtype=dtype, seed=5), 1e-5))
    assert_rotation_matches_torch(cpu_ops(rotary(head_dim), dtype), num_tokens, 8, 4, head_dim, dtype, head_norms)


@needs_kernel
def test_rotary_with_llama3_scaling_matches_torch():
    assert_rotation_matches_torch(cpu_ops(rotary(16, LLAMA3_ROPE)), 5, 4, 1, 16, torch.float32, None)


@needs_kernel
def test_rope_that_reads_the_batch_keeps_torchs_rotation():
    ops = cpu_ops(rotary(16, DYNAMIC_ROPE))
    assert ops.cos_sin_tables is None
    assert_rotation_matches_torch(ops, 5, 4, 2, 16, torch.float32, None)


@needs_kernel
def test_activations_other_than_silu_keep_torchs():
    ops = cpu_ops(hidden_act="gelu_pytorch_tanh")
    gate_up = random(3, 2 * 8, dtype=torch.float32)
    act_fn = transformers.activations.ACT2FN["gelu_pytorch_tanh"]
    assert torch.equal(ops.gated_activation(act_fn, gate_up), TORCH_OPS.gated_activation(act_fn, gate_up))


@needs_kernel
def test_positions_past_the_table_and_other_dtypes_raise_clear_errors():
    ops = cpu_ops()
    qkv, queries, keys = fused_qkv(2, 4, 2, 16, torch.float32)
    with pytest.raises(RuntimeError, match="past the table"):
        ops.rotate(queries, keys, torch.tensor([0, MAX_POSITIONS]), None)
    with pytest.raises(RuntimeError, match="float32 or bfloat16 only"):
        ops.rms_norm(torch.zeros((2, 8), dtype=torch.float16), (torch.zeros(8, dtype=torch.float16), EPS))


@pytest.fixture
def fresh_kernel_loader():
    """The loader asks again (it caches its answer per process), and after the test too."""
    load_layer_ops_kernel.cache_clear()
    yield
    load_layer_ops_kernel.cache_clear()


def ops_of_engine(model_dir, dtype="float32"):
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype=dtype, device="cpu", num_kv_blocks=64))
    return engine.runner.fast_forward.ops


@needs_kernel
def test_the_runner_picks_the_cpp_ops_on_the_cpu(tiny_model_factory, fresh_kernel_loader):
    assert type(ops_of_engine(tiny_model_factory("qwen3"))) is CpuFusedLayerOps


@needs_kernel
def test_the_rope_table_is_as_long_as_max_model_len_not_the_models_whole_context(tiny_model_factory,
                                                                                 fresh_kernel_loader):
    model_dir = tiny_model_factory("llama")
    context = LLMEngine(EngineConfig(model=str(model_dir), device="cpu", num_kv_blocks=64)).max_model_len
    engine = LLMEngine(EngineConfig(model=str(model_dir), device="cpu", num_kv_blocks=64, max_model_len=context // 2))
    cos, sin = engine.runner.fast_forward.ops.cos_sin_tables
    assert cos.shape[0] == sin.shape[0] == context // 2
    # A request that fills max_model_len, its last token decoded, reads the table's last rows.
    prompt = [3 + index % 50 for index in range(context // 2 - 2)]
    outputs = engine.generate([prompt], SamplingParams(max_tokens=2, temperature=0.0))
    assert len(outputs[0].output_token_ids) == 2


def test_the_runner_keeps_torchs_ops_with_cpu_kernels_off(tiny_model_factory, fresh_kernel_loader, monkeypatch):
    monkeypatch.setenv(CPU_KERNELS_ENV, "0")
    assert type(ops_of_engine(tiny_model_factory("llama"))) is TorchLayerOps


@needs_kernel
def test_a_dtype_the_kernels_lack_keeps_torchs_ops(tiny_model_factory, fresh_kernel_loader):
    assert type(ops_of_engine(tiny_model_factory("llama"), dtype="float16")) is TorchLayerOps


def test_gemma3_keeps_its_own_torch_ops(tiny_model_factory):
    """Gemma scales by 1 + weight in float32 before rounding: not what the kernels compute."""
    engine = LLMEngine(EngineConfig(model=str(tiny_model_factory("gemma3")), dtype="float32", device="cpu",
                                    num_kv_blocks=64))
    forward = Gemma3Forward.from_transformers(engine.runner.model)
    assert not isinstance(forward.ops, CpuFusedLayerOps)
