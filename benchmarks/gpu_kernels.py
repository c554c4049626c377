"""Where a decode step's GPU time goes: each kind of kernel of a Llama-3-8B-shaped decode step,
timed alone, as achieved memory bandwidth against a device-to-device copy in the same run; then
the paged decode attention kernel under several launch settings (tile, warps, stages).

gpu_roofline.py measures whole steps; this says which kernels keep a step from the roofline.
Every kernel runs over 32 layers' own weights and KV caches, as in a real step, so no layer
finds its operands in L2; each kind is timed as a CUDA graph replay of its 32 launches
(triton.testing.do_bench_cudagraph), so launch overhead is not counted. Weights and caches
are random bf16, built on the device (nothing is downloaded). "GB/s" counts the bytes a kernel
must move at least: the weights for a matmul, the K/V read for attention, activations in and
out for the small kernels.

Usage (GPU): PYTHONPATH=. python3 benchmarks/gpu_kernels.py --json $OUT/kernels.json
CPU check of the logic (Triton's interpreter, tiny shapes):
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/gpu_kernels.py --tiny --device cpu
The launch to try end to end (prints nothing unless one beat the default by MIN_GAIN):
    python benchmarks/gpu_kernels.py --best_launch $OUT/kernels.json --batch 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import triton

from benchmarks.gpu_roofline import FULL_SHAPE, measure_bandwidth
from runtime.engine.attention import triton_backend
from runtime.engine.attention.triton_backend import DecodeLaunch, interpreter_active
from runtime.engine.kernels import add_rms_norm, rotary_embedding, silu_and_mul

TINY_SHAPE = dict(hidden=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate=128, vocab=256)
BLOCK_SIZE = 16
# Launch settings compared for the decode attention kernel: TILE[:WARPS[:STAGES]].
DEFAULT_LAUNCHES = "64,32:4:2,64:4:2,64:8:2,128:4:2,128:8:2,128:8:3,256:8:2"
# How much faster than the default a launch must be to be worth a run of its own (noise is ~1 %).
MIN_GAIN = 0.03


@dataclass
class KernelTime:
    batch: int
    kernel: str
    ms_per_step: float
    bytes_per_step: int
    launch: str | None = None

    @property
    def gb_per_s(self) -> float:
        return self.bytes_per_step / self.ms_per_step / 1e6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU logic check)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--batch_sizes", default=None, help="comma-separated (default 1,16,64,256; tiny 1,4)")
    parser.add_argument("--context_len", type=int, default=None, help="tokens each sequence attends (default 1048)")
    parser.add_argument("--max_model_len", type=int, default=None,
                        help="sizes the attention's split count as a decode graph does (default 1315, "
                             "gpu_roofline's engine)")
    parser.add_argument("--decode_launches", default=DEFAULT_LAUNCHES,
                        help=f"comma-separated TILE[:WARPS[:STAGES]] to compare (default {DEFAULT_LAUNCHES})")
    parser.add_argument("--time_budget_s", type=float, default=100,
                        help="start no new measurement after this many seconds (the rest is reported as skipped)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--best_launch", type=Path, default=None, metavar="KERNELS_JSON",
                        help="measure nothing: print the launch that beat the default in this earlier run's "
                             f"--json by more than {MIN_GAIN:.0%} at --batch (nothing if none did)")
    parser.add_argument("--batch", type=int, default=64, help="the batch size --best_launch looks at")
    args = parser.parse_args(argv)
    if args.best_launch is not None:
        return args
    shape = TINY_SHAPE if args.tiny else FULL_SHAPE
    for name, value in shape.items():
        setattr(args, name, value)
    args.batch_sizes = [int(size) for size in (args.batch_sizes or ("1,4" if args.tiny else "1,16,64,256")).split(",")]
    args.context_len = args.context_len or (40 if args.tiny else 1048)
    args.max_model_len = args.max_model_len or (64 if args.tiny else 1315)
    try:
        args.decode_launches = [DecodeLaunch.parse(text) for text in args.decode_launches.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU (use --tiny --device cpu with TRITON_INTERPRET=1)")
    if args.device == "cpu" and not interpreter_active():
        parser.error("--device cpu runs the Triton kernels in the interpreter: set TRITON_INTERPRET=1")
    if args.context_len > args.max_model_len:
        parser.error("--context_len must be <= --max_model_len")
    return args


def time_ms(function: Callable[[], object], device: torch.device) -> float:
    """Milliseconds per call: a CUDA graph replay of `function` on a GPU; wall time on the CPU."""
    if device.type == "cuda":
        return triton.testing.do_bench_cudagraph(function, rep=50)
    function()
    started = time.perf_counter()
    function()
    return 1e3 * (time.perf_counter() - started)


class Layers:
    """Random weights for every layer, and a paged KV cache holding `max_batch` sequences of
    `max_model_len` tokens per layer."""

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
        self.args = args
        hidden, head_dim = args.hidden, args.hidden // args.num_heads
        self.head_dim = head_dim
        qkv = (args.num_heads + 2 * args.num_kv_heads) * head_dim

        def weights(rows: int, columns: int) -> list[torch.Tensor]:
            return [torch.randn(rows, columns, device=device, dtype=dtype) * 0.02 for _ in range(args.num_layers)]

        self.qkv = weights(qkv, hidden)
        self.o = weights(hidden, args.num_heads * head_dim)
        self.gate_up = weights(2 * args.intermediate, hidden)
        self.down = weights(hidden, args.intermediate)
        self.norm = torch.ones(hidden, device=device, dtype=dtype)
        self.lm_head = torch.randn(args.vocab, hidden, device=device, dtype=dtype) * 0.02
        max_batch = max(args.batch_sizes)
        self.blocks_per_seq = triton.cdiv(args.max_model_len, BLOCK_SIZE)
        cache_shape = (max_batch * self.blocks_per_seq, BLOCK_SIZE, args.num_kv_heads, head_dim)
        self.kv_caches = [(torch.randn(cache_shape, device=device, dtype=dtype),
                           torch.randn(cache_shape, device=device, dtype=dtype)) for _ in range(args.num_layers)]
        positions = torch.arange(args.max_model_len, device=device, dtype=torch.float32)
        inverse = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
        angles = torch.outer(positions, inverse).repeat(1, 2)
        self.cos, self.sin = angles.cos().to(dtype).contiguous(), angles.sin().to(dtype).contiguous()


def time_kernels(layers: Layers, batch: int, args, device: torch.device, dtype: torch.dtype) -> list[KernelTime]:
    """Each kind of kernel of one decode step at `batch`, summed over the layers."""
    element = torch.empty((), dtype=dtype).element_size()
    hidden, intermediate, head_dim = args.hidden, args.intermediate, layers.head_dim
    num_heads, num_kv_heads, num_layers = args.num_heads, args.num_kv_heads, args.num_layers
    x = torch.randn(batch, hidden, device=device, dtype=dtype)
    residual = torch.randn_like(x)
    gate_up = torch.randn(batch, 2 * intermediate, device=device, dtype=dtype)
    activated = torch.randn(batch, intermediate, device=device, dtype=dtype)
    attention_out = torch.randn(batch, num_heads * head_dim, device=device, dtype=dtype)
    queries = torch.randn(batch, num_heads, head_dim, device=device, dtype=dtype)
    keys = torch.randn(batch, num_kv_heads, head_dim, device=device, dtype=dtype)
    positions = torch.full((batch,), args.context_len - 1, device=device, dtype=torch.long)

    def over_layers(run: Callable[[int], object]) -> Callable[[], None]:
        def step() -> None:
            for layer in range(num_layers):
                run(layer)
        return step

    def weight_bytes(weights: list[torch.Tensor]) -> int:
        return sum(weight.numel() for weight in weights) * element

    activation = batch * element
    measured = [
        ("qkv_proj (matmul)", over_layers(lambda layer: F.linear(x, layers.qkv[layer])), weight_bytes(layers.qkv)),
        ("o_proj (matmul)", over_layers(lambda layer: F.linear(attention_out, layers.o[layer])),
         weight_bytes(layers.o)),
        ("gate_up_proj (matmul)", over_layers(lambda layer: F.linear(x, layers.gate_up[layer])),
         weight_bytes(layers.gate_up)),
        ("down_proj (matmul)", over_layers(lambda layer: F.linear(activated, layers.down[layer])),
         weight_bytes(layers.down)),
        ("lm_head (matmul)", lambda: F.linear(x, layers.lm_head), layers.lm_head.numel() * element),
        ("add_rms_norm x2", over_layers(lambda layer: (add_rms_norm(x, residual, layers.norm, 1e-5),
                                                       add_rms_norm(x, residual, layers.norm, 1e-5))),
         num_layers * 2 * 4 * hidden * activation),
        ("rotary", over_layers(lambda layer: rotary_embedding(queries, keys, positions, layers.cos, layers.sin)),
         num_layers * 2 * (num_heads + num_kv_heads) * head_dim * activation),
        ("silu_and_mul", over_layers(lambda layer: silu_and_mul(gate_up)), num_layers * 3 * intermediate * activation),
    ]
    results = [KernelTime(batch, name, time_ms(run, device), moved) for name, run, moved in measured]
    results.append(time_attention(layers, batch, args, device, dtype, triton_backend.DECODE_LAUNCH, queries))
    return results


def time_attention(layers: Layers, batch: int, args, device: torch.device, dtype: torch.dtype,
                   launch: DecodeLaunch, queries: torch.Tensor) -> KernelTime:
    """Paged decode attention over every layer's cache: `batch` sequences of context_len tokens,
    each in its own run of blocks, the split count chosen as a decode graph chooses it."""
    element = torch.empty((), dtype=dtype).element_size()
    tables = torch.arange(batch * layers.blocks_per_seq, device=device, dtype=torch.int32)
    block_tables = tables.view(batch, layers.blocks_per_seq)
    context_lens = torch.full((batch,), args.context_len, device=device, dtype=torch.int32)
    scale = layers.head_dim**-0.5

    def step() -> None:
        for key_cache, value_cache in layers.kv_caches:
            triton_backend.paged_decode_attention(queries, key_cache, value_cache, block_tables, context_lens, scale,
                                                  max_context_len=args.max_model_len, launch=launch)

    kv_bytes = args.num_layers * batch * args.context_len * 2 * args.num_kv_heads * layers.head_dim * element
    return KernelTime(batch, "decode attention", time_ms(step, device), kv_bytes, str(launch))


def print_header(summary: dict) -> None:
    print(f"\n{summary['device_name']}: {summary['shape']}, context {summary['context_len']}; "
          f"copy bandwidth {summary['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s; decode attention launches "
          f"(TILE:WARPS:STAGES) compared after each batch's kernels, default {summary['default_launch']}")


def print_batch(summary: dict, batch: int) -> None:
    """One batch's kernels, their sum against the roofline, then its attention launches."""
    bandwidth = summary["copy_bandwidth_bytes_per_s"]
    print(f"\n{'batch':>5} {'kernel':<24} {'ms/step':>9} {'GB/step':>9} {'GB/s':>8} {'of copy':>8}")
    rows = [row for row in summary["kernels"] if row["batch"] == batch]
    for row in rows:
        print(f"{batch:>5} {row['kernel']:<24} {row['ms_per_step']:>9.3f} {row['bytes_per_step'] / 1e9:>9.3f} "
              f"{row['gb_per_s']:>8.0f} {row['gb_per_s'] * 1e9 / bandwidth:>8.1%}")
    total_ms = sum(row["ms_per_step"] for row in rows)
    total_bytes = sum(row["bytes_per_step"] for row in rows)
    roofline_ms = total_bytes / bandwidth * 1e3
    print(f"{batch:>5} {'sum of the kernels':<24} {total_ms:>9.3f} {total_bytes / 1e9:>9.3f} "
          f"{'':>8} {roofline_ms / total_ms:>8.1%}  (roofline {roofline_ms:.3f} ms)")
    launches = [row for row in summary["attention_sweep"] if row["batch"] == batch]
    if launches:
        best = max(launches, key=lambda row: row["gb_per_s"])
        cells = "  ".join(f"{row['launch']} {row['gb_per_s']:.0f}{'*' if row is best else ''}" for row in launches)
        print(f"{batch:>5} attention GB/s by launch: {cells}")


def best_launch(summary: dict, batch: int) -> str | None:
    """The sweep's fastest launch at `batch` if it beat the default launch by more than MIN_GAIN."""
    default = next((row for row in summary["kernels"]
                    if row["batch"] == batch and row["kernel"] == "decode attention"), None)
    launches = [row for row in summary["attention_sweep"] if row["batch"] == batch]
    if default is None or not launches:
        return None
    fastest = max(launches, key=lambda row: row["gb_per_s"])
    return fastest["launch"] if fastest["gb_per_s"] > default["gb_per_s"] * (1 + MIN_GAIN) else None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.best_launch is not None:
        launch = best_launch(json.loads(args.best_launch.read_text()), args.batch)
        if launch is not None:
            print(launch)
        return
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    started = time.perf_counter()
    summary = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
        "shape": "Llama-3-8B shape" if not args.tiny else f"TINY shape {TINY_SHAPE}",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "context_len": args.context_len,
        "max_model_len": args.max_model_len,
        "batch_sizes": [],
        "copy_bandwidth_bytes_per_s": measure_bandwidth(device),
        "default_launch": str(triton_backend.DECODE_LAUNCH),
        "kernels": [],
        "attention_sweep": [],
        "skipped_for_time": [],
    }
    print_header(summary)
    layers = Layers(args, device, dtype)
    for batch in args.batch_sizes:
        if time.perf_counter() - started > args.time_budget_s:
            summary["skipped_for_time"].append(f"batch {batch}")
            continue
        summary["kernels"] += [asdict(row) | {"gb_per_s": row.gb_per_s}
                               for row in time_kernels(layers, batch, args, device, dtype)]
        queries = torch.randn(batch, args.num_heads, layers.head_dim, device=device, dtype=dtype)
        for launch in args.decode_launches:
            if time.perf_counter() - started > args.time_budget_s:
                summary["skipped_for_time"].append(f"batch {batch} launch {launch}")
                continue
            try:
                row = time_attention(layers, batch, args, device, dtype, launch, queries)
            except Exception as exc:  # a setting this card's Triton cannot compile (e.g. out of shared memory)
                print(f"batch {batch}, launch {launch}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
                continue
            summary["attention_sweep"].append(asdict(row) | {"gb_per_s": row.gb_per_s})
        summary["batch_sizes"].append(batch)
        summary["seconds"] = time.perf_counter() - started
        print_batch(summary, batch)
        if args.json:  # after every batch: a run cut short still leaves what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary, indent=2))
    for skipped in summary["skipped_for_time"]:
        print(f"{skipped}: SKIPPED (time budget)")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
