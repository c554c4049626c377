"""Offline throughput benchmark: our engine against transformers' own continuous batching
(`generate_batch`), in one process, on the same model, prompts and CPU threads. The model is a
random-weight Llama built here, or with --model one of the real checkpoints of the real-models
extra (runtime/real_models.py: SmolLM2-135M-Instruct, Gemma 3 270M), float32 as converted.

Usage: python benchmarks/engine_throughput.py [--model NAME] [--skip_ours | --skip_hf] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    ContinuousBatchingConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.utils import logging as transformers_logging

from runtime.engine import EngineConfig, LLMEngine, SamplingParams
from runtime.real_models import REAL_MODELS, RealModelMissing, checkpoint_dir

logger = logging.getLogger(__name__)

RATIO_BAR = 3.0
# generate_batch accepts "sdpa" or "paged|eager" on a CPU; its flash kernels need CUDA or XPU.
HF_ATTN_IMPLEMENTATION = "sdpa"
# Our engine's default max_num_batched_tokens, so both systems get the same per-step budget.
MAX_BATCH_TOKENS = 2048
# An id no model emits: generate_batch then stops on max_new_tokens only.
NEVER_EOS = -1
WARMUP_NUM_REQUESTS = 2
WARMUP_PROMPT_LEN = 16
WARMUP_OUTPUT_LEN = 8
MATMUL_SIZE = 2048
MATMUL_ITERATIONS = 10
# Other work on the machine wrecks small multi-threaded kernels: a descheduled thread stalls
# every barrier, so a decode step can run ten times slower.
BUSY_CORES_WARNING = 0.25

GenerateFn = Callable[["Workload"], list[list[int]]]


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    output_len: int

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(prompt) for prompt in self.prompts)


SYNTHETIC_MODEL = "synthetic"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    directory: str
    vocab_size: int
    total_parameters: int
    # Parameters costing 2 FLOPs per token: all but the embedding lookup, lm_head included.
    flop_parameters: int


@dataclass(frozen=True)
class Machine:
    threads: int
    matmul_gflops: float
    # Cores other processes kept busy during the matmul (None where /proc/stat is missing).
    other_busy_cores: float | None


@dataclass(frozen=True)
class SystemResult:
    name: str
    output_tokens: int
    seconds: float
    outputs: list[list[int]]
    # Cores other processes kept busy during the timed call.
    other_busy_cores: float | None

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=SYNTHETIC_MODEL, choices=[SYNTHETIC_MODEL, *REAL_MODELS],
                        help="the random-weight Llama built here, or a real checkpoint (the real-models extra)")
    parser.add_argument("--num_requests", type=int, default=32)
    parser.add_argument("--min_prompt", type=int, default=16, help="shortest prompt, in tokens")
    parser.add_argument("--max_prompt", type=int, default=256, help="longest prompt, in tokens")
    parser.add_argument(
        "--output_len", type=int, default=128, help="new tokens per request (EOS ignored)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the prompts")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--skip_ours", action="store_true", help="do not run our engine")
    parser.add_argument("--skip_hf", action="store_true", help="do not run generate_batch")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if not 1 <= args.min_prompt <= args.max_prompt:
        parser.error("need 1 <= --min_prompt <= --max_prompt")
    if min(args.num_requests, args.output_len, args.threads) < 1:
        parser.error("--num_requests, --output_len and --threads must be >= 1")
    if args.skip_ours and args.skip_hf:
        parser.error("--skip_ours with --skip_hf leaves nothing to benchmark")
    return args


def build_model(directory: str, seed: int) -> ModelInfo:
    """Save a ~56M-parameter float32 Llama with seeded random weights as safetensors."""
    config = LlamaConfig(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1376,
        vocab_size=32000,
        max_position_embeddings=2048,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(directory, safe_serialization=True)
    return ModelInfo(
        name=SYNTHETIC_MODEL,
        directory=directory,
        vocab_size=config.vocab_size,
        total_parameters=sum(parameter.numel() for parameter in model.parameters()),
        flop_parameters=count_flop_parameters(model),
    )


def real_model(name: str) -> ModelInfo:
    """A real checkpoint, converted from its GGUF file on first use (into the runtime's cache)."""
    directory = checkpoint_dir(name)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return ModelInfo(
        name=name,
        directory=str(directory),
        vocab_size=model.config.get_text_config().vocab_size,
        total_parameters=sum(parameter.numel() for parameter in model.parameters()),
        flop_parameters=count_flop_parameters(model),
    )


def count_flop_parameters(model: torch.nn.Module) -> int:
    """Parameters used in a matmul per token: all but the input embedding (a lookup); a
    tied lm_head shares its weight with the embedding, so it is added back."""
    input_embedding = model.get_input_embeddings().weight
    lm_head = model.get_output_embeddings().weight
    total = sum(parameter.numel() for parameter in model.parameters())
    tied_lm_head = lm_head.numel() if lm_head is input_embedding else 0
    return total - input_embedding.numel() + tied_lm_head


def random_prompts(
    num: int, min_len: int, max_len: int, vocab_size: int, rng: random.Random
) -> list[list[int]]:
    lengths = [rng.randint(min_len, max_len) for _ in range(num)]
    return [[rng.randrange(vocab_size) for _ in range(length)] for length in lengths]


def make_workloads(args: argparse.Namespace, vocab_size: int) -> tuple[Workload, Workload]:
    """The measured workload and a small warm-up one whose prompts share no prefix with it
    (so prefix caching cannot carry work from the warm-up into the timed run)."""
    rng = random.Random(args.seed)
    measured = random_prompts(
        args.num_requests, args.min_prompt, args.max_prompt, vocab_size, rng
    )
    warmup = random_prompts(
        WARMUP_NUM_REQUESTS, WARMUP_PROMPT_LEN, WARMUP_PROMPT_LEN, vocab_size, rng
    )
    return Workload(measured, args.output_len), Workload(warmup, WARMUP_OUTPUT_LEN)


def run_ours(model: ModelInfo, workload: Workload, warmup: Workload) -> SystemResult:
    engine = LLMEngine(EngineConfig(model=model.directory, dtype="float32", device="cpu"))

    def generate(work: Workload) -> list[list[int]]:
        params = SamplingParams(max_tokens=work.output_len, temperature=0.0, ignore_eos=True)
        return [output.output_token_ids for output in engine.generate(work.prompts, params)]

    return timed_run("ours", generate, workload, warmup)


def run_transformers(model: ModelInfo, workload: Workload, warmup: Workload) -> SystemResult:
    hf_model = AutoModelForCausalLM.from_pretrained(
        model.directory, dtype=torch.float32, attn_implementation=HF_ATTN_IMPLEMENTATION
    ).eval()
    batching_config = hf_batching_config(workload)

    def generate(work: Workload) -> list[list[int]]:
        generation_config = GenerationConfig(
            max_new_tokens=work.output_len, do_sample=False, eos_token_id=NEVER_EOS
        )
        results = hf_model.generate_batch(
            work.prompts,
            generation_config=generation_config,
            continuous_batching_config=batching_config,
        )
        failed = [request_id for request_id, result in results.items() if result.error]
        if len(results) != len(work.prompts) or failed:
            raise RuntimeError(
                f"generate_batch returned {len(results)}/{len(work.prompts)} results; "
                f"failed: {failed}"
            )
        # generate_batch orders its results like its inputs.
        return [list(result.generated_tokens) for result in results.values()]

    return timed_run("transformers", generate, workload, warmup)


def hf_batching_config(workload: Workload) -> ContinuousBatchingConfig:
    """The library's default page size; a cache holding the whole workload at once (nothing is
    evicted); our per-step token budget; every request admissible to a batch (what
    generate_batch itself infers from the number of requests)."""
    page_size = ContinuousBatchingConfig.page_size
    num_blocks = sum(
        math.ceil((len(prompt) + workload.output_len) / page_size) for prompt in workload.prompts
    )
    return ContinuousBatchingConfig(
        num_blocks=num_blocks,
        max_batch_tokens=MAX_BATCH_TOKENS,
        max_requests_per_batch=len(workload.prompts),
    )


def timed_run(
    name: str, generate: GenerateFn, workload: Workload, warmup: Workload
) -> SystemResult:
    """Warm up, then time only the generate call on the measured workload."""
    logger.info(
        "%s: warm-up (%d requests x %d tokens)", name, len(warmup.prompts), warmup.output_len
    )
    generate(warmup)
    logger.info(
        "%s: generating %d requests x %d tokens", name, len(workload.prompts), workload.output_len
    )
    load = OtherLoadMeter()
    start = time.perf_counter()
    outputs = generate(workload)
    seconds = time.perf_counter() - start
    output_tokens = sum(len(tokens) for tokens in outputs)
    result = SystemResult(name, output_tokens, seconds, outputs, load.other_busy_cores())
    logger.info(
        "%s: %d tokens in %.2f s (%.1f tok/s)",
        name, result.output_tokens, seconds, result.tokens_per_second,
    )
    short = [index for index, tokens in enumerate(outputs) if len(tokens) != workload.output_len]
    if short:
        logger.warning(
            "%s: requests %s did not produce %d tokens", name, short, workload.output_len
        )
    return result


def measure_matmul_gflops(size: int = MATMUL_SIZE, iterations: int = MATMUL_ITERATIONS) -> float:
    """Best-of-N float32 square matmul: the practical compute roof at this thread count."""
    left, right = torch.randn(size, size), torch.randn(size, size)
    torch.mm(left, right)
    timings = []
    for _ in range(iterations):
        start = time.perf_counter()
        torch.mm(left, right)
        timings.append(time.perf_counter() - start)
    logger.info(
        "matmul %d^3: median %.1f ms, best %.1f ms",
        size, statistics.median(timings) * 1e3, min(timings) * 1e3,
    )
    return 2 * size**3 / min(timings) / 1e9


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent so far, from /proc/stat (None off Linux)."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, stat.read_text().split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoadMeter:
    """Cores other processes keep busy from its creation on: the machine's busy CPU time
    (stolen time included) minus this process's own. On a shared box it says which numbers
    to trust."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float | None, float]:
        return time.perf_counter(), machine_busy_seconds(), time.process_time()

    def other_busy_cores(self) -> float | None:
        wall_start, busy_start, own_start = self._start
        wall_end, busy_end, own_end = self._sample()
        if busy_start is None or busy_end is None:
            return None
        others = (busy_end - busy_start) - (own_end - own_start)
        return max(0.0, others / (wall_end - wall_start))


def measure_machine(threads: int) -> Machine:
    load = OtherLoadMeter()
    matmul_gflops = measure_matmul_gflops()
    return Machine(threads, matmul_gflops, load.other_busy_cores())


def count_agreeing(ours: SystemResult, theirs: SystemResult) -> int:
    return sum(mine == other for mine, other in zip(ours.outputs, theirs.outputs))


def summarize(
    args: argparse.Namespace,
    model: ModelInfo,
    workload: Workload,
    machine: Machine,
    results: dict[str, SystemResult],
) -> dict:
    summary = {
        "workload": {
            "num_requests": len(workload.prompts),
            "prompt_tokens": workload.num_prompt_tokens,
            "prompt_len_range": [args.min_prompt, args.max_prompt],
            "output_len": workload.output_len,
            "seed": args.seed,
        },
        "machine": asdict(machine),
        "model": {
            "name": model.name,
            "vocab_size": model.vocab_size,
            "total_parameters": model.total_parameters,
            "flop_parameters": model.flop_parameters,
        },
        "transformers_config": {
            "attn_implementation": HF_ATTN_IMPLEMENTATION,
            "max_batch_tokens": MAX_BATCH_TOKENS,
        },
        "systems": {
            name: {
                "output_tokens": result.output_tokens,
                "seconds": result.seconds,
                "tokens_per_second": result.tokens_per_second,
                "other_busy_cores": result.other_busy_cores,
            }
            for name, result in results.items()
        },
    }
    if "ours" in results:
        achieved = results["ours"].tokens_per_second * 2 * model.flop_parameters / 1e9
        summary["ours_gflops"] = achieved
        summary["ours_roofline_fraction"] = achieved / machine.matmul_gflops
    if "ours" in results and "transformers" in results:
        ratio = results["ours"].tokens_per_second / results["transformers"].tokens_per_second
        summary["ratio"] = ratio
        summary["passes_bar"] = ratio >= RATIO_BAR
        summary["agreeing_requests"] = count_agreeing(results["ours"], results["transformers"])
    return summary


def print_report(summary: dict) -> None:
    work, machine, model = summary["workload"], summary["machine"], summary["model"]
    low, high = work["prompt_len_range"]
    print(f"model: {model['name']} ({model['total_parameters']:,} parameters, {model['vocab_size']:,}-token vocabulary)")
    print(
        f"workload: {work['num_requests']} requests, prompts {low}-{high} tokens "
        f"({work['prompt_tokens']} in all), {work['output_len']} new tokens each, greedy, "
        f"EOS ignored; float32 CPU, {machine['threads']} threads"
    )
    print("time: the generate call only (model load and warm-up excluded)")
    print(
        f"{'system':<14}{'output tokens':>15}{'seconds':>10}{'output tok/s':>15}"
        f"{'others busy':>13}"
    )
    for name, system in summary["systems"].items():
        print(
            f"{name:<14}{system['output_tokens']:>15}{system['seconds']:>10.2f}"
            f"{system['tokens_per_second']:>15.1f}{format_cores(system['other_busy_cores']):>13}"
        )
    if "ratio" in summary:
        verdict = "PASS" if summary["passes_bar"] else "BELOW BAR"
        print(f"ours / transformers: {summary['ratio']:.2f}x (bar {RATIO_BAR:.1f}x) {verdict}")
        print(
            f"outputs agree on {summary['agreeing_requests']}/{work['num_requests']} requests "
            "(informative only)"
        )
    print(
        f"matmul roofline: {machine['matmul_gflops']:.1f} GFLOP/s "
        f"({MATMUL_SIZE}^3 float32, best of {MATMUL_ITERATIONS}; "
        f"others busy {format_cores(machine['other_busy_cores'])} cores)"
    )
    if "ours_gflops" in summary:
        print(
            f"ours achieved: {summary['ours_gflops']:.1f} GFLOP/s = tok/s x 2 x "
            f"{model['flop_parameters']:,} parameters (all but the embedding lookup; "
            f"{model['total_parameters']:,} in all), "
            f"{summary['ours_roofline_fraction']:.1%} of the matmul roofline"
        )
    measured_loads = [machine["other_busy_cores"]]
    measured_loads += [system["other_busy_cores"] for system in summary["systems"].values()]
    worst = max((load for load in measured_loads if load is not None), default=0.0)
    if worst > BUSY_CORES_WARNING:
        print(
            f"WARNING: other processes kept up to {worst:.2f} of {os.cpu_count()} cores busy "
            "during the measurements: the numbers above are unreliable"
        )


def format_cores(cores: float | None) -> str:
    return "n/a" if cores is None else f"{cores:.2f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
    )
    logger.setLevel(logging.INFO)
    transformers_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    machine = measure_machine(args.threads)
    results: dict[str, SystemResult] = {}
    with tempfile.TemporaryDirectory(prefix="engine-throughput-") as directory:
        if args.model == SYNTHETIC_MODEL:
            logger.info("building the random-weight Llama in %s", directory)
            model = build_model(directory, args.seed)
        else:
            try:
                model = real_model(args.model)
            except RealModelMissing as exc:
                sys.exit(f"error: {exc}")
        logger.info(
            "model: %s parameters, %s of them in matmuls",
            f"{model.total_parameters:,}", f"{model.flop_parameters:,}",
        )
        workload, warmup = make_workloads(args, model.vocab_size)
        if not args.skip_ours:
            results["ours"] = run_ours(model, workload, warmup)
            gc.collect()
        if not args.skip_hf:
            results["transformers"] = run_transformers(model, workload, warmup)
    summary = summarize(args, model, workload, machine, results)
    print_report(summary)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
