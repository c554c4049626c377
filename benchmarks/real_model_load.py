"""How long the real checkpoints (the real-models extra) take to load: cold (joining Gemma's part
packages, dequantizing the GGUF file into a Hugging Face directory, then starting the engine) and
warm (a later start: the file's sha256 checked, the cached float32 safetensors loaded, the engine
warmed up), against transformers' own `from_pretrained(gguf_file=...)`, which dequantizes on
every start. Each measurement runs in a fresh process, on a fresh cache directory for the cold one.

    .venv/bin/python benchmarks/real_model_load.py [--models NAME ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from runtime.real_models import REAL_MODELS, RealModelMissing, gguf_file  # noqa: E402

# The engine's settings for the timed start: a short context keeps the KV cache and the warm-up
# pass the same for both models, so the figures compare loading, not cache sizes.
ENGINE_SETTINGS = dict(dtype="float32", device="cpu", max_model_len=2048, max_num_batched_tokens=512)


def measure(name: str, cache_dir: Path, transformers_baseline: bool = False) -> dict[str, float]:
    """One start of `name` in this process: seconds per phase."""
    import torch

    from runtime.engine import EngineConfig, LLMEngine
    from runtime.gguf_checkpoint import hf_checkpoint_dir

    torch.set_num_threads(2)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    source = gguf_file(name, cache_dir)
    timings["find_gguf"] = time.perf_counter() - started
    if transformers_baseline:
        from transformers import AutoModelForCausalLM

        started = time.perf_counter()
        AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        timings["transformers_from_gguf"] = time.perf_counter() - started
        return timings
    started = time.perf_counter()
    directory = hf_checkpoint_dir(source, cache_dir)
    timings["checkpoint"] = time.perf_counter() - started
    started = time.perf_counter()
    LLMEngine(EngineConfig(model=str(directory), **ENGINE_SETTINGS))
    timings["engine"] = time.perf_counter() - started
    timings["total"] = sum(timings.values())
    return timings


def measure_in_subprocess(name: str, cache_dir: Path, transformers_baseline: bool = False) -> dict[str, float]:
    command = [sys.executable, __file__, "--_measure", name, "--_cache_dir", str(cache_dir)]
    if transformers_baseline:
        command.append("--_transformers")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"measuring {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(REAL_MODELS), default=list(REAL_MODELS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    parser.add_argument("--_cache_dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_transformers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._measure:
        print(json.dumps(measure(args._measure, args._cache_dir, args._transformers)))
        return
    results = {}
    for name in args.models:
        try:
            gguf_file(name)
        except RealModelMissing as exc:
            sys.exit(f"error: {exc}")
        with tempfile.TemporaryDirectory(prefix="real-model-load-") as cache_dir:
            cold = measure_in_subprocess(name, Path(cache_dir))
            warm = measure_in_subprocess(name, Path(cache_dir))
            baseline = measure_in_subprocess(name, Path(cache_dir), transformers_baseline=True)
        results[name] = {"cold": cold, "warm": warm, "transformers_from_gguf": baseline["transformers_from_gguf"]}
    print(f"{'model':<24}{'start':<6}{'join/find':>11}{'checkpoint':>12}{'engine':>9}{'total':>9}")
    for name, result in results.items():
        for start in ("cold", "warm"):
            timings = result[start]
            print(f"{name:<24}{start:<6}{timings['find_gguf']:>10.1f}s{timings['checkpoint']:>11.1f}s"
                  f"{timings['engine']:>8.1f}s{timings['total']:>8.1f}s")
        print(f"{name:<24}transformers' from_pretrained(gguf_file=...), every start: "
              f"{result['transformers_from_gguf']:.1f}s")
    print("cold: the GGUF joined (Gemma) and dequantized into the cache; warm: a later start (sha256 "
          f"checked, safetensors loaded); engine: load + warm-up with {ENGINE_SETTINGS}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
