"""The grammar mask apply alone, on the CPU: a step's constrained rows (default 32 of a 49,152-token
vocabulary, SmolLM2's) given their bitmasks, by the torch path and by the C++ kernel, on masks
shaped like a JSON grammar's.

Shapes: `structural` rows allow a few dozen scattered tokens (after `{` or `,`: a quote, spaces,
a brace), so almost every word is zero; `string` rows allow all but about 4 % of the tokens,
scattered (those holding a quote, a backslash or a control character), and not the special tokens
at the end of the vocabulary, so most words are mixed; `digits` rows allow runs (number tokens
sit together in the vocabulary); `json batch` is the schema benchmark's mix: half string, a
quarter each structural and digits, in shuffled rows.

Usage: PYTHONPATH=. python benchmarks/grammar_mask_apply.py [--rows 32] [--vocab 49152]
       [--repeats 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from runtime.engine.grammar import load_bitmask_kernel, torch_apply_grammar_bitmask

SHAPES = ("structural", "string", "digits", "json batch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32, help="constrained rows per step")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size")
    parser.add_argument("--repeats", type=int, default=40, help="timed applies per shape and path")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the kernel's too)")
    args = parser.parse_args(argv)
    if min(args.rows, args.vocab, args.repeats, args.threads) < 1:
        parser.error("--rows, --vocab, --repeats and --threads must be >= 1")
    return args


def allowed_row(shape: str, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """[vocab_size] bool: the tokens one row of `shape` allows."""
    if shape == "structural":
        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        allowed[torch.randint(0, vocab_size, (40,), generator=generator)] = True
    elif shape == "string":
        allowed = torch.rand(vocab_size, generator=generator) >= 0.04
        allowed[-100:] = False
    else:
        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        for start in torch.randint(0, vocab_size - 300, (4,), generator=generator).tolist():
            allowed[start:start + 300] = True
    return allowed


def pack(allowed: torch.Tensor) -> torch.Tensor:
    """[rows, vocab] bool to the engine's bitmask: [rows, words] int32, bit t of word w for token 32w + t."""
    rows, vocab_size = allowed.shape
    padded = torch.zeros(rows, -(-vocab_size // 32) * 32, dtype=torch.int64)
    padded[:, :vocab_size] = allowed
    words = (padded.view(rows, -1, 32) << torch.arange(32)).sum(dim=-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def bitmask_for(shape: str, rows: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    if shape == "json batch":
        shapes = ["string"] * (rows // 2) + ["structural", "digits"] * (rows // 4)
        shapes += ["string"] * (rows - len(shapes))
        shapes = [shapes[i] for i in torch.randperm(rows, generator=generator).tolist()]
    else:
        shapes = [shape] * rows
    return pack(torch.stack([allowed_row(each, vocab_size, generator) for each in shapes]))


def time_apply(apply, logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor, repeats: int) -> list[float]:
    """Milliseconds per apply; the mask is reapplied to the same logits (the same work each time)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        apply(logits, rows, bitmask)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    kernel = load_bitmask_kernel()
    if kernel is None:
        raise SystemExit("the C++ kernel could not be built here (or KSERVE_LLM_CPU_KERNELS=0)")
    paths = {"torch": torch_apply_grammar_bitmask, "kernel": lambda logits, rows, mask: kernel(logits, mask, rows)}
    generator = torch.Generator().manual_seed(0)
    rows = list(range(args.rows))
    print(f"{args.rows} rows x {args.vocab} tokens, float32, {args.threads} thread(s), "
          f"ms per apply (min / median of {args.repeats}), load average {os.getloadavg()[0]:.2f}")
    print(f"{'shape':<12} {'torch min':>10} {'median':>8} {'kernel min':>11} {'median':>8}")
    for shape in SHAPES:
        bitmask = bitmask_for(shape, args.rows, args.vocab, generator)
        logits = torch.randn(args.rows, args.vocab, generator=generator)
        cells = []
        for apply in paths.values():
            times = time_apply(apply, logits.clone(), rows, bitmask, args.repeats)
            cells += [min(times), statistics.median(times)]
        print(f"{shape:<12} {cells[0]:>10.3f} {cells[1]:>8.3f} {cells[2]:>11.3f} {cells[3]:>8.3f}")


if __name__ == "__main__":
    main()
