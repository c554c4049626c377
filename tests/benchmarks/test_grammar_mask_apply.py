"""benchmarks/grammar_mask_apply.py: its masks are what it says, and it times every shape by both paths."""

from __future__ import annotations

import pytest
import torch

from benchmarks.grammar_mask_apply import SHAPES, allowed_row, main, pack
from runtime.engine.grammar import load_bitmask_kernel, torch_apply_grammar_bitmask


def test_a_packed_mask_forbids_exactly_the_tokens_not_allowed():
    generator = torch.Generator().manual_seed(0)
    allowed = torch.stack([allowed_row(shape, 1000, generator) for shape in ("structural", "string", "digits")])
    logits = torch.zeros(3, 1000)
    torch_apply_grammar_bitmask(logits, [0, 1, 2], pack(allowed))
    assert torch.equal(logits == 0, allowed)


@pytest.mark.skipif(load_bitmask_kernel() is None, reason="no C++ toolchain to build the kernel")
def test_every_shape_is_timed_by_both_paths(capsys):
    main(["--rows", "4", "--vocab", "1000", "--repeats", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == [shape.split()[0] for shape in SHAPES]
    # torch min, median; kernel min, median
    assert all(float(cell) > 0 for line in lines[2:] for cell in line.split()[-4:])
