"""The CPU linear layer (runtime/engine/cpu_linear.py) gives F.linear's result, to float32 rounding, on
every path: the C++ few-rows kernel, oneDNN's inner product, and the row-sliced product and
F.linear it falls back to (without oneDNN, or in another dtype), for decode- and prefill-sized
batches, with and without bias, on 2-D and 3-D inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runtime.engine.cpu_linear import (
    FEW_ROWS_MAX_ROWS,
    MAX_SKINNY_ROWS,
    ONEDNN_LINEAR,
    ONEDNN_MAX_ROWS,
    ROW_BUCKETS,
    WARM_UP_MAX_ROWS,
    WEIGHT_SLICE_ROWS,
    CpuLinear,
    load_few_rows_kernel,
    use_fast_cpu_layers,
    warm_up_cpu_linears,
)

# Past one weight slice, so that the row-sliced product runs more than one slice.
OUT_FEATURES = WEIGHT_SLICE_ROWS + 300
IN_FEATURES = 96
ROW_COUNTS = [1, 7, MAX_SKINNY_ROWS, MAX_SKINNY_ROWS + 1, 300]
needs_few_rows_kernel = pytest.mark.skipif(load_few_rows_kernel() is None,
                                           reason="no C++ toolchain or no AVX-512 for the few-rows kernel")


def make_linear(bias: bool, dtype: torch.dtype = torch.float32) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(IN_FEATURES, OUT_FEATURES, bias=bias).to(dtype).requires_grad_(False)


@pytest.mark.parametrize("use_few_rows_kernel", [True, False])
@pytest.mark.parametrize("use_onednn", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_float32_matches_f_linear(use_few_rows_kernel, use_onednn, bias, rows):
    linear = make_linear(bias)
    layer = CpuLinear(linear, use_onednn=use_onednn, use_few_rows_kernel=use_few_rows_kernel)
    hidden = torch.randn(rows, IN_FEATURES)
    output = layer(hidden)
    assert output.shape == (rows, OUT_FEATURES) and output.dtype == torch.float32
    torch.testing.assert_close(output, F.linear(hidden, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)


def test_onednn_is_used_where_torch_has_it():
    """torch's CPU wheels have oneDNN: the fast path is not silently lost to a rename in torch."""
    if torch.backends.mkldnn.is_available():
        assert ONEDNN_LINEAR is not None
        assert CpuLinear(make_linear(False)).onednn is ONEDNN_LINEAR


@pytest.mark.parametrize("use_onednn", [True, False])
def test_three_dimensional_and_strided_inputs(use_onednn):
    linear = make_linear(True)
    layer = CpuLinear(linear, use_onednn=use_onednn)
    batched = torch.randn(2, 5, IN_FEATURES)
    torch.testing.assert_close(layer(batched), F.linear(batched, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
    strided = torch.randn(IN_FEATURES, 9).t()
    torch.testing.assert_close(layer(strided), F.linear(strided, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [3, MAX_SKINNY_ROWS + 1])
def test_bfloat16_takes_the_fallback(rows):
    linear = make_linear(True, torch.bfloat16)
    hidden = torch.randn(rows, IN_FEATURES, dtype=torch.bfloat16)
    output = CpuLinear(linear)(hidden)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), F.linear(hidden, linear.weight, linear.bias).float(),
                               rtol=2e-2, atol=2e-2)


def test_a_transformers_lm_head_is_replaced_and_stays_tied():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=100, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    use_fast_cpu_layers(model)
    head = model.get_output_embeddings()
    assert isinstance(head, CpuLinear) and head.weight is model.get_input_embeddings().weight


@pytest.mark.skipif(ONEDNN_LINEAR is None, reason="this torch has no oneDNN")
def test_row_counts_share_their_buckets_kernels():
    """Every row count up to ONEDNN_MAX_ROWS is padded to a bucket (and gives F.linear's result):
    oneDNN compiles one kernel per shape, so the number of shapes it sees stays bounded."""
    assert list(ROW_BUCKETS) == sorted(set(ROW_BUCKETS)) and ROW_BUCKETS[-1] == ONEDNN_MAX_ROWS
    linear = make_linear(True)
    layer = CpuLinear(linear, use_few_rows_kernel=False)
    seen_rows = []
    real_op = layer.onednn
    layer.onednn = lambda rows, *args: seen_rows.append(rows.shape[0]) or real_op(rows, *args)
    for num_rows in range(1, ONEDNN_MAX_ROWS + 1):
        hidden = torch.randn(num_rows, IN_FEATURES)
        torch.testing.assert_close(layer(hidden), F.linear(hidden, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
    assert set(seen_rows) == set(ROW_BUCKETS)
    assert all(bucket >= rows and bucket <= 1.25 * rows + 1 for rows, bucket in enumerate(seen_rows, start=1))


def test_warm_up_runs_each_weight_shape_at_every_bucket_up_to_its_limit():
    """Except the buckets the few-rows kernel computes, where it loads."""
    model = torch.nn.Sequential(CpuLinear(make_linear(True)), CpuLinear(make_linear(True)),
                                CpuLinear(torch.nn.Linear(OUT_FEATURES, 8)))
    skipped = FEW_ROWS_MAX_ROWS if load_few_rows_kernel() is not None else 0
    small_buckets = [bucket for bucket in ROW_BUCKETS if skipped < bucket <= WARM_UP_MAX_ROWS]
    all_buckets = [bucket for bucket in ROW_BUCKETS if bucket > skipped]
    onednn = ONEDNN_LINEAR is not None
    assert warm_up_cpu_linears(model) == (2 * len(small_buckets) if onednn else 0)
    assert warm_up_cpu_linears(model, max_rows=ONEDNN_MAX_ROWS) == (2 * len(all_buckets) if onednn else 0)


@needs_few_rows_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("in_features, out_features", [(512, 1024), (37, 5), (100, 33), (16, 1), (1376, 97)])
def test_few_rows_kernel_matches_f_linear(threads, in_features, out_features):
    """Every row count it takes (and more, in passes), input widths that are no multiple of a
    vector, output counts that are no multiple of a block, with and without bias."""
    kernel = load_few_rows_kernel()
    generator = torch.Generator().manual_seed(in_features * out_features)
    weight = torch.randn(out_features, in_features, generator=generator)
    bias = torch.randn(out_features, generator=generator)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in range(1, 2 * FEW_ROWS_MAX_ROWS + 3):
            hidden = torch.randn(rows, in_features, generator=generator)
            for layer_bias in (bias, None):
                torch.testing.assert_close(kernel(hidden, weight, layer_bias), F.linear(hidden, weight, layer_bias),
                                           rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(previous_threads)


@needs_few_rows_kernel
def test_few_rows_take_the_kernel_and_strided_rows_fall_back(monkeypatch):
    linear = make_linear(True)
    layer = CpuLinear(linear)
    calls = []
    kernel = load_few_rows_kernel()
    monkeypatch.setattr("runtime.engine.cpu_linear.load_few_rows_kernel",
                        lambda: lambda *args: calls.append(args[0].shape[0]) or kernel(*args))
    for rows in (1, FEW_ROWS_MAX_ROWS, FEW_ROWS_MAX_ROWS + 1):
        hidden = torch.randn(rows, IN_FEATURES)
        torch.testing.assert_close(layer(hidden), F.linear(hidden, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
    strided = torch.randn(IN_FEATURES, 3).t()
    torch.testing.assert_close(layer(strided), F.linear(strided, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
    assert calls == [1, FEW_ROWS_MAX_ROWS]


def test_without_the_few_rows_kernel_onednn_computes_few_rows(monkeypatch):
    """KSERVE_LLM_CPU_KERNELS=0 or no compiler: load_few_rows_kernel gives None."""
    monkeypatch.setattr("runtime.engine.cpu_linear.load_few_rows_kernel", lambda: None)
    linear = make_linear(False)
    hidden = torch.randn(2, IN_FEATURES)
    torch.testing.assert_close(CpuLinear(linear)(hidden), F.linear(hidden, linear.weight), rtol=1e-5, atol=1e-5)
