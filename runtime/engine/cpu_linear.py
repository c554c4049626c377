"""Linear layers for CPU steps.

torch's `F.linear` on the CPU goes to MKL's sgemm, which repacks the weight matrix on every call:
at a decode step's few rows that copy costs about as much as the product. oneDNN's inner product
(the op torch's own CPU compiler emits, `mkldnn::_linear_pointwise`) does not. Measured on the
benchmark model's matmuls (8 layers and the LM head, every weight read from memory as in a real
step, 2 threads): 1 row 7.8 ms against 15.2 with `F.linear`, 32 rows 20.9 against 39.5, 256 rows
105 against 141 (BENCHMARKS.md has the engine's gain). Its float32 results agree with
`F.linear`'s to rounding (about 1e-6).

oneDNN builds (JIT-compiles) a kernel for each shape it meets, about 0.6 ms and 0.55 MiB each,
and keeps up to 1024 of them: with every batch size a shape of its own, a server's memory would
grow with each new batch size seen (towards 0.6 GB) and steps would wait for compiles. So rows
are padded up to one of ROW_BUCKETS (4 sizes per octave: at most 25 % more rows, and less time,
since a few rows' product costs mostly its weight reads), batches past ONEDNN_MAX_ROWS (prefill
steps, where MKL's repacking is spread over many rows) keep F.linear: at most 26 kernels per
weight shape, 15 MiB. The engine compiles the buckets up to WARM_UP_MAX_ROWS at start
(`warm_up_cpu_linears`), those every small decode batch meets; a larger bucket's first step
compiles its own, a few ms inside a step of tens. Warming all of them took most of the demo
predictor's warm-up (0.7 s of 1.2 s on the 2-core VM under load), for products of up to 256 rows
through every weight, the LM head's included (BENCHMARKS.md, Cold start).

Up to FEW_ROWS_MAX_ROWS rows (a decode step at a few streams) a C++ kernel of ours does better
still (csrc/few_rows_linear.cpp): it reads each weight row once, in place, into registers and
multiplies it with every row at once, where oneDNN's inner product at 1-16 rows streams the
weights well below the memory's rate. Measured on the same products (benchmarks/cpu_gemv.py,
1 thread): 1 row 0.72x oneDNN's time, 4 rows 0.6x, 8 rows 0.6x, 16 rows 0.85-0.9x, 24 rows
1.2x (there oneDNN's blocking wins). It is built on first use, at the engine's warm-up
(`warm_up_cpu_linears`), and only used as its AVX-512 build: elsewhere oneDNN keeps those rows.

Without oneDNN (a torch build lacking it) or for other dtypes (its CPU half-precision support
depends on the processor), few rows are computed as W @ x.T in row slices of W, which streams
the weights better than MKL's x @ W.T: 12-18 % faster per decode step, the 32000-row LM head
about 1.5x. Same parameters in every case, so tied weights stay tied.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .cpu_extensions import load_cpu_extension

# Above this many rows the ordinary x @ W.T product is the faster one (without oneDNN).
MAX_SKINNY_ROWS = 64
WEIGHT_SLICE_ROWS = 2048
ROW_BUCKETS = (1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64,
               80, 96, 112, 128, 160, 192, 224, 256)
ONEDNN_MAX_ROWS = ROW_BUCKETS[-1]
# The buckets warm_up_cpu_linears compiles by default (see the module's note).
WARM_UP_MAX_ROWS = 32
# _BUCKET_OF[rows]: the bucket that `rows` (1 .. ONEDNN_MAX_ROWS) is padded to.
_BUCKET_OF = [0] + [next(bucket for bucket in ROW_BUCKETS if bucket >= rows) for rows in range(1, ONEDNN_MAX_ROWS + 1)]


def _onednn_linear():
    """oneDNN's linear (x, weight, bias, "none", [], "") -> x @ weight.T + bias, or None where this
    torch lacks it. A private op: it is checked on a small product before the engine relies on it,
    so that a torch that changed it falls back instead of failing steps."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise.default
        # Fixed values: drawing random ones would move the global RNG at import.
        rows = torch.arange(24, dtype=torch.float32).reshape(3, 8).sin()
        weight, bias = torch.arange(40, dtype=torch.float32).reshape(5, 8).cos(), torch.arange(5.0)
        if torch.allclose(op(rows, weight, bias, "none", [], ""), F.linear(rows, weight, bias), atol=1e-5):
            return op
    except (AttributeError, RuntimeError, TypeError):
        pass
    return None


ONEDNN_LINEAR = _onednn_linear()

FEW_ROWS_KERNEL_NAME = "kserve_llm_cpu_few_rows_linear"
FEW_ROWS_KERNEL_SOURCE = Path(__file__).parent / "csrc" / "few_rows_linear.cpp"
# Up to this many rows the C++ kernel is faster than oneDNN (benchmarks/cpu_gemv.py).
FEW_ROWS_MAX_ROWS = 16


@functools.cache
def load_few_rows_kernel() -> Callable | None:
    """The C++ CPU kernel few_rows_linear(rows, weight, bias) -> rows @ weight.T + bias (float32,
    weight read in place), or None where it cannot be built here or is not vectorised (the
    portable build is no faster than oneDNN). Built on first use (cpu_extensions.py)."""
    module = load_cpu_extension(FEW_ROWS_KERNEL_NAME, FEW_ROWS_KERNEL_SOURCE, "few-rows linear")
    return module.few_rows_linear if module is not None and module.vectorised else None


class CpuLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear, use_onednn: bool = True, use_few_rows_kernel: bool = True) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.onednn = ONEDNN_LINEAR if use_onednn else None
        # What of the kernel's conditions the layer itself decides, once: its rows are checked per call.
        self.use_few_rows_kernel = (
            use_few_rows_kernel
            and self.weight.dtype is torch.float32
            and self.weight.is_contiguous()
            and (self.bias is None or (self.bias.dtype is torch.float32 and self.bias.is_contiguous()))
        )

    @property
    def uses_onednn(self) -> bool:
        return self.onednn is not None and self.weight.dtype is torch.float32

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        num_rows = rows.shape[0]
        if 0 < num_rows <= FEW_ROWS_MAX_ROWS and self._few_rows_kernel_applies(rows):
            output = load_few_rows_kernel()(rows, self.weight, self.bias)
            return output.reshape(*hidden.shape[:-1], self.out_features)
        if 0 < num_rows <= ONEDNN_MAX_ROWS and hidden.dtype is torch.float32 and self.uses_onednn:
            return self._onednn_product(rows).reshape(*hidden.shape[:-1], self.out_features)
        if num_rows > MAX_SKINNY_ROWS or rows.device.type != "cpu":
            return F.linear(hidden, self.weight, self.bias)
        # Row slices of W.T-products land in contiguous rows of the transposed output.
        transposed = torch.empty(self.out_features, rows.shape[0], dtype=rows.dtype)
        columns = rows.t()
        for start in range(0, self.out_features, WEIGHT_SLICE_ROWS):
            stop = start + WEIGHT_SLICE_ROWS
            torch.mm(self.weight[start:stop], columns, out=transposed[start:stop])
        output = transposed.t()
        if self.bias is not None:
            output = output + self.bias
        return output.reshape(*hidden.shape[:-1], self.out_features)

    def _few_rows_kernel_applies(self, rows: torch.Tensor) -> bool:
        return (
            self.use_few_rows_kernel
            and rows.dtype is torch.float32
            and rows.device.type == "cpu"
            and rows.stride(-1) == 1
            and load_few_rows_kernel() is not None
        )

    def _onednn_product(self, rows: torch.Tensor) -> torch.Tensor:
        num_rows = rows.shape[0]
        bucket = _BUCKET_OF[num_rows]
        if bucket != num_rows:
            padded = rows.new_zeros(bucket, rows.shape[1])
            padded[:num_rows] = rows
            rows = padded
        return self.onednn(rows, self.weight, self.bias, "none", [], "")[:num_rows]


def warm_up_cpu_linears(model: torch.nn.Module, max_rows: int = WARM_UP_MAX_ROWS) -> int:
    """Load the few-rows kernel and have oneDNN compile each weight shape's kernel at every row
    bucket up to `max_rows` that the few-rows kernel does not cover, now, so that small batches
    never wait for a compile. Returns the number of (shape, bucket) kernels run."""
    few_rows_kernel = load_few_rows_kernel()
    shapes = {}
    for module in model.modules():
        if isinstance(module, CpuLinear) and module.uses_onednn:
            shapes.setdefault((module.in_features, module.out_features, module.bias is not None), module)
    num_run = 0
    with torch.inference_mode():
        for layer in shapes.values():
            skipped = FEW_ROWS_MAX_ROWS if few_rows_kernel is not None and layer.use_few_rows_kernel else 0
            for bucket in (bucket for bucket in ROW_BUCKETS if skipped < bucket <= max_rows):
                layer(torch.zeros(bucket, layer.in_features))
                num_run += 1
    return num_run


def cpu_linear_if_cpu(linear: torch.nn.Linear) -> torch.nn.Module:
    return CpuLinear(linear) if linear.weight.device.type == "cpu" else linear


def use_fast_cpu_layers(model: torch.nn.Module) -> None:
    """Give a transformers model our LM head (its other layers are its own)."""
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear:
        model.set_output_embeddings(CpuLinear(head))
