"""GPU decode benchmark: our engine's decode tokens/s on a Llama-3-8B-shaped model with random
bf16 weights, as a fraction of the HBM roofline, against transformers' `generate_batch`.

For each batch size, requests with ~`--context_len`-token prompts are prefilled, then
`--decode_steps` engine steps (every request decoding) are timed, once with decode steps
replayed as CUDA graphs and once eagerly (`--modes`; graphs need the triton attention backend),
each with the step loop that `--async_scheduling` names: "on" queues every step before the
previous one's tokens reach the host (the engine's default on CUDA), "off" waits for them.
The roofline of a step is the bytes it must read, weights + the KV cache of every sequence,
over the memory bandwidth measured in the same run (a large device-to-device copy). CUDA events
around each forward give the GPU time of the model itself (fwd GPU ms); the rest of a step is
host work, input copies and sampling. The model is built in memory on the device
(`LLMEngine(config, model=...)`), so nothing is written to disk.

Usage (GPU): PYTHONPATH=. python benchmarks/gpu_roofline.py --json $OUT/gpu_roofline.json
CPU check of the logic: PYTHONPATH=. python benchmarks/gpu_roofline.py --tiny --device cpu
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

from runtime.engine import EngineConfig, LLMEngine, SamplingParams
from runtime.engine.attention import triton_backend

logger = logging.getLogger(__name__)

# Llama-3-8B's shape; --tiny swaps in a small one for a CPU check.
FULL_SHAPE = dict(hidden=4096, num_layers=32, num_heads=32, num_kv_heads=8, intermediate=14336, vocab=128256)
TINY_SHAPE = dict(hidden=256, num_layers=2, num_heads=4, num_kv_heads=2, intermediate=512, vocab=1024)
WARMUP_DECODE_STEPS = 3
# How the engine runs decode steps: replaying captured CUDA graphs, or eagerly (enforce_eager).
ENGINE_MODES = ("cuda_graphs", "eager")
# The engine's step loop: async scheduling on (overlapping host and GPU work) or off.
STEP_LOOPS = {"on": "async", "off": "sync"}
# Each request may decode this many tokens while the others are still being prefilled.
TOKEN_HEADROOM = 256
BANDWIDTH_BYTES = {"cuda": 4 << 30, "cpu": 256 << 20}
BANDWIDTH_ITERATIONS = 10
# generate_batch's attention implementations, fastest first; names changed across
# transformers versions, so each is tried until one runs.
HF_ATTN_CANDIDATES = ("flash_attention_2", "paged|flash_attention_2", "paged|sdpa", "sdpa_paged", "sdpa")
NEVER_EOS = -1


@dataclass
class DecodeResult:
    system: str
    batch: int
    decode_steps: int
    tokens_per_second: float
    mean_context_len: float
    roofline_tokens_per_second: float
    fraction_of_roofline: float
    # GPU time of the model forward in a timed step (the graph replay, or an eager forward from its
    # first kernel to its last); the rest of the step is host work, input copies and sampling.
    forward_gpu_ms: float | None = None

    @property
    def step_ms(self) -> float:
        return 1e3 * self.batch / self.tokens_per_second


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model shape and workload (CPU logic check)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                        help="default: bfloat16 on cuda, float32 on cpu")
    for name, value in FULL_SHAPE.items():
        parser.add_argument(f"--{name}", type=int, default=None, help=f"model shape (default {value})")
    parser.add_argument("--batch_sizes", default=None, help="comma-separated (default 1,16,64,256; tiny 1,4)")
    parser.add_argument("--context_len", type=int, default=None, help="prompt tokens (default 1024; tiny 64)")
    parser.add_argument("--decode_steps", type=int, default=None, help="timed steps (default 32; tiny 4)")
    parser.add_argument("--attention_backends", default=None,
                        help="comma-separated engine backends (default triton,torch on cuda; torch on cpu)")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated engine modes, each run with every backend: {', '.join(ENGINE_MODES)} "
                             "(default both on cuda; eager on cpu)")
    parser.add_argument("--async_scheduling", default="on",
                        help="comma-separated step loops to run each mode with: on, off (default on, the "
                             "engine's default on CUDA)")
    parser.add_argument("--max_num_batched_tokens", type=int, default=8192, help="engine prefill budget per step")
    parser.add_argument("--decode_launch", default=None, metavar="TILE[:WARPS[:STAGES]]",
                        help="the decode attention kernel's launch settings for every engine (default: the "
                             "engine's DECODE_LAUNCH; benchmarks/gpu_kernels.py compares them)")
    parser.add_argument("--decode_programs_per_sm", default=None,
                        help="comma-separated values of the decode kernel's split target to compare "
                             "(default: the engine's DECODE_PROGRAMS_PER_SM only)")
    parser.add_argument("--hf_batch", type=int, default=None, help="generate_batch batch size (default 64; 0 skips)")
    parser.add_argument("--hf_decode_steps", type=int, default=None,
                        help="generate_batch decode steps (default 128; tiny 32): more than ours, since its "
                             "per-call start-up has to cancel out")
    parser.add_argument("--time_budget_s", type=float, default=270,
                        help="start no new measurement after this many seconds (the rest is reported as skipped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    shape = TINY_SHAPE if args.tiny else FULL_SHAPE
    for name, value in shape.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    on_cuda = args.device == "cuda"
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    args.batch_sizes = [int(size) for size in (args.batch_sizes or ("1,4" if args.tiny else "1,16,64,256")).split(",")]
    args.context_len = args.context_len or (64 if args.tiny else 1024)
    args.decode_steps = args.decode_steps or (4 if args.tiny else 32)
    args.attention_backends = (args.attention_backends or ("triton,torch" if on_cuda else "torch")).split(",")
    args.modes = (args.modes or (",".join(ENGINE_MODES) if on_cuda else "eager")).split(",")
    args.hf_batch = (4 if args.tiny else 64) if args.hf_batch is None else args.hf_batch
    args.hf_decode_steps = args.hf_decode_steps or (32 if args.tiny else 128)
    if on_cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU (use --device cpu --tiny for a logic check)")
    if min(args.batch_sizes) < 1 or min(args.context_len, args.decode_steps, args.hf_decode_steps) < 1:
        parser.error("batch sizes, --context_len and the decode steps must be >= 1")
    if args.decode_launch is not None:
        try:
            triton_backend.DECODE_LAUNCH = triton_backend.DecodeLaunch.parse(args.decode_launch)
        except ValueError as exc:
            parser.error(str(exc))
    args.async_scheduling = args.async_scheduling.split(",")
    if set(args.async_scheduling) - set(STEP_LOOPS):
        parser.error("--async_scheduling takes on, off or both")
    unknown_modes = set(args.modes) - set(ENGINE_MODES)
    if unknown_modes:
        parser.error(f"unknown --modes {', '.join(sorted(unknown_modes))}; choose from {', '.join(ENGINE_MODES)}")
    return args


def shape_note(args: argparse.Namespace) -> str:
    shape = {name: getattr(args, name) for name in FULL_SHAPE}
    if shape == FULL_SHAPE:
        return "Llama-3-8B shape"
    changed = ", ".join(
        f"{name}={value} (8B: {FULL_SHAPE[name]})" for name, value in shape.items() if value != FULL_SHAPE[name]
    )
    return f"REDUCED from the Llama-3-8B shape: {changed}"


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """Random weights, initialised straight on the device in the target dtype."""
    config = LlamaConfig(
        hidden_size=args.hidden,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        intermediate_size=args.intermediate,
        vocab_size=args.vocab,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    )
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    return model.eval().requires_grad_(False)


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    """Every weight is read once per step, except the input embedding (a lookup of a few rows),
    unless the LM head shares it."""
    input_embedding = model.get_input_embeddings().weight
    lm_head = model.get_output_embeddings().weight
    total = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    if lm_head is not input_embedding:
        total -= input_embedding.numel() * input_embedding.element_size()
    return total


def kv_bytes_per_token(args: argparse.Namespace) -> int:
    head_dim = args.hidden // args.num_heads
    element_size = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    return 2 * args.num_layers * args.num_kv_heads * head_dim * element_size


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy, counting what is read and what is written."""
    size = BANDWIDTH_BYTES[device.type]
    source = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(BANDWIDTH_ITERATIONS):
        target.copy_(source)
    synchronize(device)
    seconds = time.perf_counter() - started
    del source, target
    return 2 * size * BANDWIDTH_ITERATIONS / seconds


def random_prompts(count: int, length: int, vocab: int, rng: random.Random) -> list[list[int]]:
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(count)]


def roofline_tokens_per_second(batch: int, mean_context_len: float, weight_bytes: int, kv_per_token: int,
                               bandwidth: float) -> float:
    step_bytes = weight_bytes + batch * mean_context_len * kv_per_token
    return batch * bandwidth / step_bytes


def measure_engine_decode(
    engine: LLMEngine, batch: int, args: argparse.Namespace, rng: random.Random, forward_timer: ForwardGpuTimer | None
) -> tuple[float, float, float | None]:
    """Prefill `batch` requests, then time decode steps only. Returns (tokens/s, mean tokens
    each sequence attends per timed step, GPU milliseconds of a timed step's forward or None)."""
    params = SamplingParams(max_tokens=TOKEN_HEADROOM + WARMUP_DECODE_STEPS + args.decode_steps,
                            temperature=0.0, ignore_eos=True)
    request_ids = [f"b{batch}-{index}" for index in range(batch)]
    for request_id, prompt in zip(request_ids, random_prompts(batch, args.context_len, args.vocab, rng)):
        engine.add_request(request_id, prompt, params)
    num_tokens: dict[str, int] = {}
    started = time.perf_counter()
    while len(num_tokens) < batch:  # until every request is decoding
        record_lengths(engine.step(), num_tokens)
    logger.info("batch %d: prefilled in %.1f s", batch, time.perf_counter() - started)
    for _ in range(WARMUP_DECODE_STEPS):
        record_lengths(engine.step(), num_tokens)
    # The next step computes each sequence's last sampled token, attending all its tokens.
    context_at_start = sum(num_tokens.values()) / batch
    synchronize(engine.device)
    if forward_timer is not None:
        forward_timer.reset()
    started = time.perf_counter()
    generated = 0
    for _ in range(args.decode_steps):
        outputs = engine.step()
        generated += len(outputs)
    synchronize(engine.device)
    seconds = time.perf_counter() - started
    forward_ms = forward_timer.mean_ms() if forward_timer is not None else None
    for request_id in request_ids:
        engine.abort(request_id)
    if generated != batch * args.decode_steps:
        logger.warning("batch %d: %d tokens in %d steps, expected %d", batch, generated, args.decode_steps,
                       batch * args.decode_steps)
    return generated / seconds, context_at_start + (args.decode_steps - 1) / 2, forward_ms


class ForwardGpuTimer:
    """CUDA events around every model forward an engine runs (an eager forward, or a decode
    graph's replay): how much of a step the GPU spends on the model itself."""

    def __init__(self, engine: LLMEngine) -> None:
        self.spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        runner = engine.runner
        runner._forward = self._timed(runner._forward)
        graphs = runner.decode_graphs
        if graphs is not None:
            graphs.graphs = {size: (self._timed(replay), logits) for size, (replay, logits) in graphs.graphs.items()}

    def _timed(self, forward):
        def timed(*args, **kwargs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = forward(*args, **kwargs)
            end.record()
            self.spans.append((start, end))
            return result

        return timed

    def reset(self) -> None:
        self.spans.clear()

    def mean_ms(self) -> float | None:
        torch.cuda.synchronize()
        if not self.spans:
            return None
        return sum(start.elapsed_time(end) for start, end in self.spans) / len(self.spans)


def record_lengths(outputs, num_tokens: dict[str, int]) -> None:
    for output in outputs:
        num_tokens[output.request_id] = len(output.prompt_token_ids) + len(output.output_token_ids)


def system_name(backend: str, mode: str, async_scheduling: str, programs_per_sm: int | None = None) -> str:
    suffix = f"/{programs_per_sm}-per-sm" if programs_per_sm is not None else ""
    return f"ours/{backend}/{mode}/{STEP_LOOPS[async_scheduling]}{suffix}"


def run_engine(
    model: torch.nn.Module, backend: str, mode: str, async_scheduling: str, args: argparse.Namespace, roofline,
    programs_per_sm: int | None = None,
) -> list[DecodeResult]:
    system = system_name(backend, mode, async_scheduling, programs_per_sm)
    if programs_per_sm is not None:
        triton_backend.DECODE_PROGRAMS_PER_SM = programs_per_sm
    max_batch = max(args.batch_sizes)
    max_model_len = args.context_len + TOKEN_HEADROOM + WARMUP_DECODE_STEPS + args.decode_steps
    block_size = 16
    config = EngineConfig(
        model=f"random-llama-{args.num_layers}-layers",
        dtype=args.dtype,
        device=args.device,
        block_size=block_size,
        num_kv_blocks=max_batch * -(-max_model_len // block_size) + 1,
        max_num_seqs=max_batch,
        max_num_batched_tokens=max(args.max_num_batched_tokens, max_batch),
        max_model_len=max_model_len,
        attention_backend=backend,
        enforce_eager=mode == "eager",
        async_scheduling=async_scheduling == "on",
    )
    engine = LLMEngine(config, model=model)
    # As the server does once started (serving/server.py, freeze_startup_heap): without it, a full
    # garbage collection over the heap the model build left stalls the step loop for 100+ ms.
    gc.collect()
    gc.freeze()
    actual = engine.runner.attention_backend.name
    if actual != backend:
        raise RuntimeError(f"asked for attention backend {backend!r}, engine runs {actual!r}")
    rng = random.Random(args.seed)
    forward_timer = ForwardGpuTimer(engine) if engine.device.type == "cuda" else None
    results = []
    try:
        if mode == "cuda_graphs" and engine.runner.decode_graphs is None:
            args.not_measured[system] = f"no CUDA graphs: {engine.runner.decode_graph_blocker()}"
            logger.warning("%s not measured: %s", system, args.not_measured[system])
            return results
        for batch in args.batch_sizes:
            if over_budget(args, f"{system} batch {batch}"):
                continue
            tokens_per_second, mean_context, forward_ms = measure_engine_decode(engine, batch, args, rng,
                                                                                forward_timer)
            results.append(make_result(system, batch, args.decode_steps, tokens_per_second, mean_context, roofline,
                                       forward_ms))
            logger.info("%s", results[-1])
    finally:
        del engine
        gc.unfreeze()  # so that the engine's KV cache can be collected
        release_memory(args.device)
    return results


def run_transformers(model: torch.nn.Module, args: argparse.Namespace, roofline) -> tuple[DecodeResult | None, dict]:
    """generate_batch's decode rate: (time for 1 + N new tokens - time for 1) per N tokens, so
    its prefill and start-up cancel out."""
    batch = args.hf_batch
    rng = random.Random(args.seed + 1)
    prompts = random_prompts(batch, args.context_len, args.vocab, rng)
    report: dict = {"batch": batch, "attempts": {}}
    for implementation in HF_ATTN_CANDIDATES:
        try:
            model.set_attn_implementation(implementation)
            hf_generate(model, prompts[:2], 2)  # warm-up, and does this implementation run?
        except Exception as exc:  # unknown name, kernel missing, unsupported by this version
            report["attempts"][implementation] = f"{type(exc).__name__}: {exc}"[:300]
            logger.info("generate_batch with %s failed: %s", implementation, report["attempts"][implementation])
            continue
        report["attn_implementation"] = implementation
        first_token_seconds = hf_generate(model, prompts, 1)
        total_seconds = hf_generate(model, prompts, 1 + args.hf_decode_steps)
        decode_seconds = total_seconds - first_token_seconds
        report.update(prefill_and_first_token_seconds=first_token_seconds, total_seconds=total_seconds)
        if decode_seconds <= 0:
            report["error"] = "decode time not measurable (noise larger than the decode steps)"
            return None, report
        mean_context = args.context_len + (args.hf_decode_steps + 1) / 2
        result = make_result(f"transformers/{implementation}", batch, args.hf_decode_steps,
                             batch * args.hf_decode_steps / decode_seconds, mean_context, roofline)
        return result, report
    report["error"] = "no attention implementation ran"
    return None, report


def hf_generate(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int) -> float:
    generation_config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=NEVER_EOS)
    synchronize(model.device)
    started = time.perf_counter()
    results = model.generate_batch(prompts, generation_config=generation_config)
    synchronize(model.device)
    seconds = time.perf_counter() - started
    produced = [len(result.generated_tokens) for result in results.values()]
    if len(produced) != len(prompts) or min(produced) != max_new_tokens:
        raise RuntimeError(
            f"generate_batch produced {produced} tokens, expected {max_new_tokens} for each of {len(prompts)}"
        )
    return seconds


def make_result(
    system: str, batch: int, steps: int, tokens_per_second: float, mean_context: float, roofline,
    forward_gpu_ms: float | None = None,
) -> DecodeResult:
    roof = roofline(batch, mean_context)
    return DecodeResult(system, batch, steps, tokens_per_second, mean_context, roof, tokens_per_second / roof,
                        forward_gpu_ms)


def over_budget(args: argparse.Namespace, measurement: str) -> bool:
    if time.perf_counter() - args.started < args.time_budget_s:
        return False
    logger.warning("time budget of %.0f s spent: skipping %s", args.time_budget_s, measurement)
    args.skipped.append(measurement)
    return True


def release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def print_table(summary: dict) -> None:
    print(f"\n{summary['device_name']}: {summary['shape']}, {summary['dtype']}, "
          f"{summary['weight_bytes'] / 1e9:.2f} GB of weights, {summary['kv_bytes_per_token'] / 1024:.0f} KiB KV/token")
    print(f"measured memory bandwidth (device copy, read + write): {summary['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s")
    print(f"{'system':<40} {'batch':>5} {'ctx':>7} {'tok/s':>10} {'roofline':>10} {'fraction':>8} "
          f"{'step ms':>8} {'fwd GPU ms':>10}")
    for row in summary["results"]:
        forward = "" if row["forward_gpu_ms"] is None else f"{row['forward_gpu_ms']:.2f}"
        print(f"{row['system']:<40} {row['batch']:>5} {row['mean_context_len']:>7.0f} "
              f"{row['tokens_per_second']:>10.1f} {row['roofline_tokens_per_second']:>10.1f} "
              f"{row['fraction_of_roofline']:>8.1%} {row['step_ms']:>8.2f} {forward:>10}")
    for name, error in summary["errors"].items():
        print(f"{name}: FAILED: {error}")
    for measurement in summary["skipped_for_time"]:
        print(f"{measurement}: SKIPPED (time budget)")
    for system, reason in summary["not_measured"].items():
        print(f"{system}: NOT MEASURED ({reason})")
    hf = summary["transformers_generate_batch"]
    if hf and "error" in hf:
        print(f"transformers generate_batch did not run: {hf}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.started = started = time.perf_counter()
    args.skipped = []
    args.not_measured = {}
    device = torch.device(args.device)
    note = shape_note(args)
    logger.info("building the model (%s) on %s", note, device)
    model = build_model(args)
    weight_bytes = weight_bytes_per_step(model)
    kv_per_token = kv_bytes_per_token(args)
    bandwidth = measure_bandwidth(device)
    logger.info("model built; bandwidth %.0f GB/s", bandwidth / 1e9)

    def roofline(batch: int, mean_context: float) -> float:
        return roofline_tokens_per_second(batch, mean_context, weight_bytes, kv_per_token, bandwidth)

    results: list[DecodeResult] = []
    errors: dict[str, str] = {}
    split_targets = [int(value) for value in args.decode_programs_per_sm.split(",")] \
        if args.decode_programs_per_sm else [None]
    for backend, mode, async_scheduling, programs_per_sm in itertools.product(
        args.attention_backends, args.modes, args.async_scheduling, split_targets
    ):
        system = system_name(backend, mode, async_scheduling, programs_per_sm)
        if over_budget(args, system):
            continue
        try:
            results += run_engine(model, backend, mode, async_scheduling, args, roofline, programs_per_sm)
        except Exception as exc:
            logger.exception("%s failed", system)
            errors[system] = f"{type(exc).__name__}: {exc}"[:500]
            release_memory(args.device)
    hf_report = None
    if args.hf_batch and not over_budget(args, "transformers generate_batch"):
        try:
            hf_result, hf_report = run_transformers(model, args, roofline)
            if hf_result is not None:
                results.append(hf_result)
        except Exception as exc:
            logger.exception("transformers generate_batch failed")
            hf_report = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    summary = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shape": note,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "context_len": args.context_len,
        "decode_launch": str(triton_backend.DECODE_LAUNCH),
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": kv_per_token,
        "bandwidth_bytes_per_s": bandwidth,
        "results": [asdict(result) | {"step_ms": result.step_ms} for result in results],
        "errors": errors,
        "skipped_for_time": args.skipped,
        "not_measured": args.not_measured,
        "transformers_generate_batch": hf_report,
        "seconds": time.perf_counter() - started,
    }
    print_table(summary)
    print(f"total {summary['seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    if errors or not results:
        sys.exit(1)


if __name__ == "__main__":
    main()
