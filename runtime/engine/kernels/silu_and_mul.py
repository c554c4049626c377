"""SiLU(gate) * up over the fused gate/up projection's output, as transformers' Llama MLP
computes it: SiLU in float32 rounded to the input dtype, then the product rounded again."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Columns of the output per program: a handful of programs per row keeps a decode step's
# few rows spread over the SMs.
_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr, out_ptr, stride_gate_up, stride_out, intermediate_size, BLOCK: tl.constexpr,
):
    """One program per (row, block of output columns)."""
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = columns < intermediate_size
    gate_row = gate_up_ptr + row * stride_gate_up
    gate = tl.load(gate_row + columns, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_row + intermediate_size + columns, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    activated = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_out + columns, (activated * up).to(dtype), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [tokens, 2 * intermediate] (gate columns first) -> [tokens, intermediate]."""
    if gate_up.dim() != 2 or gate_up.shape[1] % 2:
        raise ValueError(f"gate_up must be [tokens, 2 * intermediate], got {tuple(gate_up.shape)}")
    if gate_up.stride(-1) != 1:
        gate_up = gate_up.contiguous()
    num_tokens, intermediate_size = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((num_tokens, intermediate_size), dtype=gate_up.dtype, device=gate_up.device)
    if num_tokens == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(intermediate_size))
    grid = (num_tokens, triton.cdiv(intermediate_size, block))
    _silu_and_mul_kernel[grid](gate_up, out, gate_up.stride(0), out.stride(0), intermediate_size, BLOCK=block,
                               num_warps=4)
    return out
