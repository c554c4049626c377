"""The C++ CPU grammar mask kernel, built for this CPU and portably (no AVX-512), against the torch
path it replaces on the CPU: the same logits."""

from __future__ import annotations

import pytest
import torch

from runtime.engine import grammar
from runtime.engine.cpu_extensions import load_cpu_extension
from runtime.engine.grammar import (
    BITMASK_KERNEL_SOURCE,
    apply_grammar_bitmask,
    load_bitmask_kernel,
    torch_apply_grammar_bitmask,
)

pytestmark = pytest.mark.skipif(load_bitmask_kernel() is None, reason="no C++ toolchain to build the kernel")


@pytest.fixture(scope="module", params=["this CPU", "portable"])
def kernel(request):
    if request.param == "this CPU":
        return load_bitmask_kernel()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
        module = load_cpu_extension("kserve_llm_cpu_token_bitmask", BITMASK_KERNEL_SOURCE, "grammar mask")
    return module.apply_token_bitmask


def random_bitmask(num_rows: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """[num_rows, words] int32: a third of the words allow every token, a third none, the rest
    random bits (the padding bits past the vocabulary too)."""
    num_words = -(-vocab_size // 32)
    words = torch.randint(-2**31, 2**31 - 1, (num_rows, num_words), dtype=torch.int32, generator=generator)
    kind = torch.randint(0, 3, (num_rows, num_words), generator=generator)
    words[kind == 0] = -1
    words[kind == 1] = 0
    return words


@pytest.mark.parametrize("vocab_size", [1, 31, 32, 33, 77, 1000, 49152, 49155])
@pytest.mark.parametrize("order", ["all", "reversed", "shuffled subset"])
def test_the_kernel_gives_the_torch_paths_logits(kernel, vocab_size, order):
    generator = torch.Generator().manual_seed(vocab_size)
    num_rows = 9
    rows = {"all": list(range(num_rows)), "reversed": list(range(num_rows))[::-1],
            "shuffled subset": torch.randperm(num_rows, generator=generator)[:5].tolist()}[order]
    bitmask = random_bitmask(len(rows), vocab_size, generator)
    logits = torch.randn(num_rows, vocab_size, generator=generator)
    expected = logits.clone()
    torch_apply_grammar_bitmask(expected, rows, bitmask)
    kernel(logits, bitmask, rows)
    assert torch.equal(logits, expected)
    assert logits.isneginf().any() or vocab_size < 32  # the masks forbade something


def test_float32_cpu_logits_go_through_the_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(grammar, "load_bitmask_kernel", lambda: lambda *args: calls.append(args))
    apply_grammar_bitmask(torch.zeros(2, 64), [1], torch.zeros(1, 2, dtype=torch.int32))
    assert len(calls) == 1 and calls[0][2] == [1]


def test_rows_without_a_mask_are_untouched():
    logits = torch.randn(4, 64)
    before = logits.clone()
    apply_grammar_bitmask(logits, [2], torch.zeros(1, 2, dtype=torch.int32))
    assert logits[2].isneginf().all()
    assert torch.equal(logits[[0, 1, 3]], before[[0, 1, 3]])


def test_logits_the_kernel_does_not_take_go_the_torch_way(monkeypatch):
    """bfloat16 (the sampler upcasts, but the function accepts it) and strided logits fall back to
    torch; with the kernels off every CPU row does. All give the float32 kernel's -inf."""
    generator = torch.Generator().manual_seed(1)
    bitmask = random_bitmask(3, 100, generator)
    logits = torch.randn(3, 100, generator=generator)
    expected = logits.clone()
    apply_grammar_bitmask(expected, [0, 1, 2], bitmask)
    in_bfloat16 = logits.bfloat16()
    apply_grammar_bitmask(in_bfloat16, [0, 1, 2], bitmask)
    assert torch.equal(in_bfloat16.isneginf(), expected.isneginf())
    strided = torch.randn(100, 3, generator=generator).t().copy_(logits)
    apply_grammar_bitmask(strided, [0, 1, 2], bitmask)
    assert torch.equal(strided, expected)
    monkeypatch.setattr(grammar, "load_bitmask_kernel", lambda: None)
    kernels_off = logits.clone()
    apply_grammar_bitmask(kernels_off, [0, 1, 2], bitmask)
    assert torch.equal(kernels_off, expected)


def test_the_kernel_refuses_what_it_cannot_apply(kernel):
    logits = torch.zeros(2, 64)
    with pytest.raises(RuntimeError, match="row out of range"):
        kernel(logits, torch.zeros(1, 2, dtype=torch.int32), [2])
    with pytest.raises(RuntimeError, match="narrower than the vocabulary"):
        kernel(logits, torch.zeros(1, 1, dtype=torch.int32), [0])
    with pytest.raises(RuntimeError, match="one bitmask row per row"):
        kernel(logits, torch.zeros(2, 2, dtype=torch.int32), [0])
