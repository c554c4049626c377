"""xgrammar against llguidance for the engine's constrained decoding, on real tokenizers: how long
each takes to read a tokenizer (once per engine), to compile a few realistic JSON schemas (once per
distinct schema, then cached), and to compute one row's token mask (every step of a constrained
row, on the host, before the step's sampling), the mask walked through a valid answer token by
token. Each library runs in a fresh process; the tokenizers are the real checkpoints' (the
real-models extra): SmolLM2's 49k vocabulary and Gemma 3's 262k one.

    .venv/bin/python benchmarks/grammar_backends.py [--models NAME ...] [--libraries xgrammar llguidance]
                                                    [--threads 2] [--json PATH]

llguidance is what the engine uses (a dependency); xgrammar is measured when it is importable
(`pip install xgrammar` into a scratch environment, or PYTHONPATH to a `pip install --target` of
it): it is not a dependency. The comparison that chose llguidance is in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

LIBRARIES = ("xgrammar", "llguidance")
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")

# Realistic schemas, each with an answer that matches it (the mask is walked through its tokens).
SCHEMAS: dict[str, tuple[dict, object]] = {
    "person": (
        {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                                          "email": {"type": "string"}},
         "required": ["name", "age"], "additionalProperties": False},
        {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org"},
    ),
    "order": (
        {"type": "object", "properties": {
            "order_id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{6}$"},
            "status": {"enum": ["pending", "shipped", "delivered", "cancelled"]},
            "items": {"type": "array", "minItems": 1, "maxItems": 20, "items": {
                "type": "object", "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"},
                                                 "price": {"type": "number"}},
                "required": ["sku", "quantity", "price"], "additionalProperties": False}},
            "shipping": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                                          "country": {"type": "string", "maxLength": 2}},
                         "required": ["city", "country"]},
            "gift": {"type": "boolean"}},
         "required": ["order_id", "status", "items"], "additionalProperties": False},
        {"order_id": "ABC-123456", "status": "shipped",
         "items": [{"sku": "pen-blue", "quantity": 3, "price": 1.25}, {"sku": "notebook", "quantity": 1, "price": 4.5}],
         "shipping": {"street": "1 Main St", "city": "Paris", "country": "FR"}, "gift": False},
    ),
    "tool_call": (
        {"type": "object", "properties": {
            "name": {"const": "get_weather"},
            "arguments": {"type": "object", "properties": {
                "location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 14}, {"type": "null"}]}},
                "required": ["location", "unit"], "additionalProperties": False}},
         "required": ["name", "arguments"], "additionalProperties": False},
        {"name": "get_weather", "arguments": {"location": "San Francisco, CA", "unit": "celsius", "days": 3}},
    ),
    "any_json": ({"type": "object"}, {"answer": [1, 2.5, "three", {"four": None}], "ok": True}),
}


def measure(library: str, model: str, threads: int) -> dict:
    """One library on one model's tokenizer, in this process."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from runtime.real_models import checkpoint_dir

    torch.set_num_threads(threads)
    directory = checkpoint_dir(model)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    vocab_size = AutoConfig.from_pretrained(directory).get_text_config().vocab_size
    backend = {"xgrammar": _XGrammar, "llguidance": _LLGuidance}[library](tokenizer, vocab_size, threads)
    result = {"library": library, "model": model, "vocab_size": vocab_size,
              "tokenizer_seconds": backend.tokenizer_seconds, "schemas": {}}
    for name, (schema, answer) in SCHEMAS.items():
        started = time.perf_counter()
        compiled = backend.compile(json.dumps(schema))
        compile_seconds = time.perf_counter() - started
        token_ids = tokenizer.encode(json.dumps(answer), add_special_tokens=False)
        mask_seconds = backend.walk(compiled, token_ids)
        result["schemas"][name] = {
            "compile_ms": compile_seconds * 1e3,
            "tokens": len(token_ids),
            "first_mask_us": mask_seconds[0] * 1e6,
            "mask_us_median": statistics.median(mask_seconds) * 1e6,
            "mask_us_max": max(mask_seconds) * 1e6,
            "masks_ms_total": sum(mask_seconds) * 1e3,
        }
    return result


class _XGrammar:
    def __init__(self, tokenizer, vocab_size: int, threads: int) -> None:
        import xgrammar

        self.xgrammar = xgrammar
        started = time.perf_counter()
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.tokenizer_seconds = time.perf_counter() - started
        # Compiling again for each schema: no cache between the measured compiles.
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=threads, cache_enabled=False)
        self.bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)

    def compile(self, schema: str):
        return self.compiler.compile_json_schema(schema, any_whitespace=True)

    def walk(self, compiled, token_ids: list[int]) -> list[float]:
        matcher = self.xgrammar.GrammarMatcher(compiled)
        seconds = []
        for token in token_ids:
            started = time.perf_counter()
            matcher.fill_next_token_bitmask(self.bitmask, 0)
            seconds.append(time.perf_counter() - started)
            if not matcher.accept_token(token):
                raise RuntimeError(f"xgrammar refused token {token}")
        return seconds


class _LLGuidance:
    def __init__(self, tokenizer, vocab_size: int, threads: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llguidance = llguidance
        self.fill = llguidance.torch.fill_next_token_bitmask
        started = time.perf_counter()
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.tokenizer_seconds = time.perf_counter() - started
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)

    def compile(self, schema: str):
        grammar = self.llguidance.LLMatcher.grammar_from_json_schema(schema)
        # Building a matcher is where llguidance compiles (the lexer, the token trie's slices).
        matcher = self.llguidance.LLMatcher(self.tokenizer, grammar)
        if matcher.is_error():
            raise RuntimeError(matcher.get_error())
        return grammar

    def walk(self, grammar: str, token_ids: list[int]) -> list[float]:
        matcher = self.llguidance.LLMatcher(self.tokenizer, grammar)
        seconds = []
        for token in token_ids:
            started = time.perf_counter()
            self.fill(matcher, self.bitmask, 0)
            seconds.append(time.perf_counter() - started)
            if not matcher.consume_token(token):
                raise RuntimeError(f"llguidance refused token {token}: {matcher.get_error()}")
        return seconds


def measure_in_subprocess(library: str, model: str, threads: int) -> dict:
    command = [sys.executable, __file__, "--_measure", library, model, "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode:
        raise RuntimeError(f"{library} on {model} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def print_table(results: list[dict]) -> None:
    print(f"{'library':<11} {'model':<22} {'tokenizer s':>11} {'schema':<10} {'compile ms':>10} {'tokens':>6} "
          f"{'1st mask us':>11} {'mask us p50':>11} {'max':>8} {'all masks ms':>12}")
    for result in results:
        for index, (name, row) in enumerate(result["schemas"].items()):
            tokenizer = f"{result['tokenizer_seconds']:.2f}" if index == 0 else ""
            print(f"{result['library']:<11} {result['model']:<22} {tokenizer:>11} {name:<10} "
                  f"{row['compile_ms']:>10.1f} "
                  f"{row['tokens']:>6} {row['first_mask_us']:>11.0f} {row['mask_us_median']:>11.0f} "
                  f"{row['mask_us_max']:>8.0f} {row['masks_ms_total']:>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--_measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(*args._measure, threads=args.threads)))
        return
    libraries = [library for library in args.libraries if importlib.util.find_spec(library) is not None]
    for missing in sorted(set(args.libraries) - set(libraries)):
        print(f"{missing} is not installed: not measured", file=sys.stderr)
    results = []
    for model in args.models:
        for library in libraries:
            print(f"measuring {library} on {model} ...", file=sys.stderr, flush=True)
            results.append(measure_in_subprocess(library, model, args.threads))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
