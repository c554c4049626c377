"""A decode step's matrix products at a few rows on the CPU: the C++ few-rows kernel
(runtime/engine/csrc/few_rows_linear.cpp) against oneDNN's inner product and F.linear (MKL).

The products run as in a real step of the demo "large" model (hidden 512, intermediate 1376,
8 layers, vocab 8192, float32): for each layer q/k/v fused (512 -> 1024), o (512 -> 512),
gate/up fused (512 -> 2752) and down (1376 -> 512), each layer its own weights, then the LM head
(512 -> 8192), 126 MB read per step, more than the last-level cache holds: every weight comes
from memory, as in the engine. Each call is timed alone and summed per shape; the methods take
turns step by step, in the same process, so load on the machine hits them alike.

Usage: PYTHONPATH=. python benchmarks/cpu_gemv.py [--rows 1,2,4,8,16] [--threads 1,2] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from runtime.engine.cpu_linear import ONEDNN_LINEAR, load_few_rows_kernel

HIDDEN, INTERMEDIATE, LAYERS, VOCAB = 512, 1376, 8, 8192
# (name, in, out) of each layer's products.
LAYER_SHAPES = (("qkv", HIDDEN, 1024), ("o", HIDDEN, HIDDEN), ("gate_up", HIDDEN, 2 * INTERMEDIATE),
                ("down", INTERMEDIATE, HIDDEN))
SHAPES = (*LAYER_SHAPES, ("head", HIDDEN, VOCAB))


def methods() -> dict:
    kernel = load_few_rows_kernel()
    found = {"kernel": kernel} if kernel is not None else {}
    if ONEDNN_LINEAR is not None:
        found["onednn"] = lambda x, w, b: ONEDNN_LINEAR(x, w, b, "none", [], "")
    found["F.linear"] = F.linear
    return found


def make_weights() -> list[tuple[str, torch.Tensor]]:
    """(shape name, weight) in a step's order: every layer's products, then the LM head."""
    generator = torch.Generator().manual_seed(0)
    weights = [(name, torch.randn(out, inp, generator=generator) * 0.02)
               for _ in range(LAYERS) for name, inp, out in LAYER_SHAPES]
    return [*weights, ("head", torch.randn(VOCAB, HIDDEN, generator=generator) * 0.02)]


def time_step(product, weights, inputs) -> dict[str, float]:
    """Seconds per shape of one step's products."""
    seconds = defaultdict(float)
    for name, weight in weights:
        x = inputs[weight.shape[1]]
        started = time.perf_counter()
        product(x, weight, None)
        seconds[name] += time.perf_counter() - started
    return seconds


def measure(rows: int, threads: int, steps: int, weights, found: dict) -> dict[str, dict[str, float]]:
    """Per method, per shape (and "total"): median ms per step."""
    torch.set_num_threads(threads)
    inputs = {inp: torch.randn(rows, inp) for inp in (HIDDEN, INTERMEDIATE)}
    samples = {method: defaultdict(list) for method in found}
    for step in range(steps + 2):
        for method, product in found.items():
            seconds = time_step(product, weights, inputs)
            if step < 2:  # warm-up: oneDNN compiles its kernels, pages fault in
                continue
            for name, value in seconds.items():
                samples[method][name].append(value * 1e3)
            samples[method]["total"].append(sum(seconds.values()) * 1e3)
    return {method: {name: statistics.median(values) for name, values in by_shape.items()}
            for method, by_shape in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,4,8,16")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    found = methods()
    weights = make_weights()
    names = [name for name, _, _ in SHAPES] + ["total"]
    print(f"methods: {', '.join(found)}; ms per step (8 layers + head), median of {args.steps}")
    print("| threads | rows | method | " + " | ".join(names) + " | vs onednn |")
    print("| --- " * (len(names) + 4) + "|")
    with torch.inference_mode():
        for threads in map(int, args.threads.split(",")):
            for rows in map(int, args.rows.split(",")):
                result = measure(rows, threads, args.steps, weights, found)
                reference = result.get("onednn", result["F.linear"])["total"]
                for method, by_shape in result.items():
                    cells = " | ".join(f"{by_shape[name]:.2f}" for name in names)
                    print(f"| {threads} | {rows} | {method} | {cells} | {by_shape['total'] / reference:.2f} |", flush=True)


if __name__ == "__main__":
    main()
