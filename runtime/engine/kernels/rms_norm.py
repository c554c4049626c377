"""RMSNorm, alone or after the residual add, as transformers' Llama computes it: the sum and the
statistics in float32, the normalised value cast back to the input dtype, then scaled by the
weight (rounded to the input dtype again)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    hidden_ptr, residual_ptr, out_ptr, weight_ptr,
    stride_hidden, stride_residual, stride_out,
    hidden_size, eps,
    ADD_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program per row. With ADD_RESIDUAL, the row is residual + hidden (rounded to the
    input dtype, as a torch add would, and stored back into the residual) before normalising."""
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK)
    mask = columns < hidden_size
    dtype = hidden_ptr.dtype.element_ty
    row_values = tl.load(hidden_ptr + row * stride_hidden + columns, mask=mask, other=0.0).to(tl.float32)
    if ADD_RESIDUAL:
        residual_row = residual_ptr + row * stride_residual + columns
        summed = (row_values + tl.load(residual_row, mask=mask, other=0.0).to(tl.float32)).to(dtype)
        tl.store(residual_row, summed, mask=mask)
        row_values = summed.to(tl.float32)
    inverse_rms = tl.rsqrt(tl.sum(row_values * row_values, 0) / hidden_size + eps)
    normalised = (row_values * inverse_rms).to(dtype).to(tl.float32)
    weight = tl.load(weight_ptr + columns, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + columns, (weight * normalised).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of `hidden` (any leading shape); returns a new tensor."""
    rows = _rows(hidden)
    out = torch.empty_like(rows)
    _launch(rows, rows, out, weight, eps, add_residual=False)
    return out.view(hidden.shape)


def add_rms_norm(
    hidden: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """residual += hidden, then RMSNorm of the sum: returns (normalised, residual).

    Both in place, to spare the allocations: `residual` holds the sum afterwards and `hidden`
    the normalised sum (a row is read whole before it is written). Both are [tokens, hidden],
    the last dimension contiguous."""
    if hidden.shape != residual.shape or hidden.dim() != 2:
        raise ValueError(f"hidden and residual must both be [tokens, hidden], got {tuple(hidden.shape)} "
                         f"and {tuple(residual.shape)}")
    if hidden.stride(-1) != 1 or residual.stride(-1) != 1:
        raise ValueError("hidden and residual need a contiguous last dimension")
    _launch(hidden, residual, hidden, weight, eps, add_residual=True)
    return hidden, residual


def _rows(hidden: torch.Tensor) -> torch.Tensor:
    """`hidden` as [rows, hidden_size] with unit stride along a row (a copy only if need be)."""
    rows = hidden.reshape(-1, hidden.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _launch(
    hidden: torch.Tensor, residual: torch.Tensor, out: torch.Tensor, weight: torch.Tensor, eps: float,
    add_residual: bool,
) -> None:
    num_rows, hidden_size = hidden.shape
    if weight.shape != (hidden_size,):
        raise ValueError(f"weight must be [{hidden_size}], got {tuple(weight.shape)}")
    if num_rows == 0:
        return
    block = triton.next_power_of_2(hidden_size)
    _rms_norm_kernel[(num_rows,)](
        hidden, residual, out, weight,
        hidden.stride(0), residual.stride(0), out.stride(0),
        hidden_size, eps,
        ADD_RESIDUAL=add_residual, BLOCK=block, num_warps=_num_warps(block),
    )


def _num_warps(block: int) -> int:
    # About 16 bytes a thread per load at bf16: enough threads to keep a row's loads in flight.
    return min(max(block // 256, 1), 16)
