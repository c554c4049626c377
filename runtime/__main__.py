"""The predictor: `python -m runtime --model_dir /mnt/models` (or `--demo small`) serves the engine
through KServe's model server: v1 and v2 REST, v2 gRPC, the generate extension, /metrics."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from fastapi import FastAPI

from runtime.triton_imports import keep_triton_out_unless_cuda

# Before the engine's imports, and only when run as the predictor (tests import this module too):
# on a CPU, triton would be imported through transformers and print leak warnings at exit.
if __name__ == "__main__":
    keep_triton_out_unless_cuda(sys.argv[1:])

from runtime.cache import add_cache_dir_argument
from runtime.engine import (
    STARTUP,
    ConfigError,
    EngineConfig,
    ModelLoadError,
    describe_startup,
    import_tokenizer_support_in_background,
    seconds_since_process_start,
)
from runtime.generate_routes import add_generate_routes
from runtime.gguf_checkpoint import GGUFCheckpointError, hf_checkpoint_dir
from runtime.metrics import set_startup_seconds
from runtime.model import LLMModel
from serving.component import (
    component_parser,
    exit_if_cannot_start,
    limits_group,
    parse_component_args,
    serve,
    start_tracing,
)
from serving.lifespan import chain_lifespan
from serving.server import describe_server_limits
from serving.tracing import PREDICTOR_SERVICE

logger = logging.getLogger("runtime")

DEFAULT_MAX_QUEUE = 256
_ENGINE_DEFAULTS = {field.name: field.default for field in dataclasses.fields(EngineConfig)}


def build_parser() -> argparse.ArgumentParser:
    parser = component_parser("python -m runtime", __doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model_dir", default="/mnt/models",
                        help="Hugging Face checkpoint directory, or a .gguf file (or a directory holding one), "
                             "converted once into --cache_dir")
    source.add_argument("--demo", choices=("small", "large"), help="serve the embedded demo model (random weights)")
    add_cache_dir_argument(parser)
    _add_engine_arguments(parser.add_argument_group("engine"))
    limits = limits_group(parser)
    limits.add_argument("--max_queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help="requests that may wait for a batch slot; more get 503 (negative: unbounded)")
    limits.add_argument("--request_timeout", type=float, default=None,
                        help="seconds a request may take; past it, it is aborted with 504")
    ray = parser.add_argument_group("ray (scale-out)")
    ray.add_argument("--ray_replicas", type=int, default=0,
                     help="engine replicas as a Ray Serve deployment (0: one engine in this process)")
    ray.add_argument("--ray_address", default=None, help="Ray cluster to join (unset: start a local Ray)")
    ray.add_argument("--ray_num_cpus", type=int, default=None, help="CPUs of the local Ray (unset: all)")
    ray.add_argument("--ray_replica_cpus", type=float, default=1.0, help="CPUs each replica reserves")
    return parser


def _add_engine_arguments(group: argparse._ArgumentGroup) -> None:
    defaults = _ENGINE_DEFAULTS
    group.add_argument("--dtype", default=defaults["dtype"], help="auto, float32, float16 or bfloat16")
    group.add_argument("--device", default=defaults["device"], help="auto, cpu or cuda")
    group.add_argument("--block_size", type=int, default=defaults["block_size"], help="tokens per KV block")
    group.add_argument("--num_gpu_blocks", type=int, default=None, help="KV blocks (overrides --kv_cache_memory)")
    group.add_argument("--kv_cache_memory", type=int, default=None, help="KV cache size in bytes")
    group.add_argument("--gpu_memory_utilization", type=float, default=defaults["gpu_memory_utilization"])
    group.add_argument("--max_num_seqs", type=int, default=defaults["max_num_seqs"])
    group.add_argument("--max_num_batched_tokens", type=int, default=defaults["max_num_batched_tokens"])
    group.add_argument("--decode_step_target_seconds", type=float, default=0.0,
                       help="the time a step holding running streams aims to stay within: prompt chunks beside "
                            "them are sized to fit it, trading throughput and median inter-token latency for a "
                            "lower p99 under load (see BENCHMARKS.md; 0, the default: off, every step fills "
                            "--max_num_batched_tokens)")
    group.add_argument("--min_prefill_chunk_tokens", type=int, default=defaults["min_prefill_chunk_tokens"],
                       help="prompt tokens a step beside running streams computes at least")
    group.add_argument("--max_model_len", type=int, default=None, help="context length (unset: the model's)")
    group.add_argument("--enable_prefix_caching", action=argparse.BooleanOptionalAction,
                       default=defaults["enable_prefix_caching"])
    group.add_argument("--attention_backend", default=defaults["attention_backend"],
                       help="attention kernels (see EngineConfig.attention_backend)")
    group.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (unset: torch's choice)")
    group.add_argument("--enforce_eager", action="store_true",
                       help="run every step eagerly: no CUDA graphs for decode steps")
    group.add_argument("--cuda_graph_batch_sizes", type=int, nargs="+", default=None,
                       help="decode batch sizes captured as CUDA graphs, e.g. 1 2 4 8 (unset: the engine's "
                            "list up to max_num_seqs, see EngineConfig)")
    group.add_argument("--async_scheduling", action=argparse.BooleanOptionalAction, default=None,
                       help="queue each step on the device before the previous one's tokens reach the host, "
                            "so host work overlaps GPU work (unset: on with CUDA, off on the CPU)")
    group.add_argument("--grammar_compile_timeout", type=float, default=defaults["grammar_compile_timeout"],
                       help="seconds a structured output or tool call's grammar may take to compile; a slower one "
                            "is refused (400)")
    group.add_argument("--grammar_cache_size", type=int, default=defaults["grammar_cache_size"],
                       help="compiled grammars kept, most recently used first, so a repeated schema compiles once")
    group.add_argument("--speculative_model", default=None,
                       help="checkpoint directory of a draft model with the same vocabulary: speculative decoding")
    group.add_argument("--num_speculative_tokens", type=int, default=None,
                       help="draft tokens proposed per sequence and step (needs --speculative_model)")
    group.add_argument("--speculative_disable_by_batch_size", type=int,
                       default=defaults["speculative_disable_by_batch_size"],
                       help="decode normally in steps of this many sequences or more, where speculation stops paying")
    group.add_argument("--trust_remote_code", action="store_true")
    group.add_argument("--allow_pickle_weights", action="store_true", help="load .bin/.pt checkpoints (runs pickle)")


def engine_config(args: argparse.Namespace, model_dir: str) -> EngineConfig:
    return EngineConfig(
        model=model_dir,
        dtype=args.dtype,
        device=args.device,
        block_size=args.block_size,
        num_kv_blocks=args.num_gpu_blocks,
        kv_cache_memory_bytes=args.kv_cache_memory,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        decode_step_target_seconds=args.decode_step_target_seconds or None,
        min_prefill_chunk_tokens=args.min_prefill_chunk_tokens,
        max_model_len=args.max_model_len,
        enable_prefix_caching=args.enable_prefix_caching,
        attention_backend=args.attention_backend,
        max_queue_size=args.max_queue if args.max_queue >= 0 else None,
        trust_remote_code=args.trust_remote_code,
        allow_pickle_weights=args.allow_pickle_weights,
        num_threads=args.num_threads,
        enforce_eager=args.enforce_eager,
        cuda_graph_batch_sizes=args.cuda_graph_batch_sizes,
        async_scheduling=args.async_scheduling,
        grammar_compile_timeout=args.grammar_compile_timeout,
        grammar_cache_size=args.grammar_cache_size,
        speculative_model=args.speculative_model,
        num_speculative_tokens=args.num_speculative_tokens,
        speculative_disable_by_batch_size=args.speculative_disable_by_batch_size,
    )


def build_model(args: argparse.Namespace, config: EngineConfig) -> LLMModel:
    if not args.ray_replicas:
        return LLMModel(args.model_name, config, args.request_timeout, args.grace_period)
    # Imported here: Ray is only needed (and only paid for) when serving on it.
    from runtime.ray_serving import RayLLMModel, RayOptions

    options = RayOptions(args.ray_replicas, args.ray_address, args.ray_num_cpus, args.ray_replica_cpus)
    return RayLLMModel(args.model_name, config, options, args.request_timeout, args.grace_period)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.workers != 1:
        parser.error("--workers must be 1: the engine lives in one process (scale with replicas)")
    if args.request_timeout is not None and args.request_timeout <= 0:
        parser.error("--request_timeout must be > 0")
    if args.ray_replicas < 0:
        parser.error("--ray_replicas must be >= 0")


def checkpoint_dir(args: argparse.Namespace) -> str:
    """--model_dir (a GGUF file's converted directory, converted on first use), or with --demo the
    demo model's directory (built on first use)."""
    if not args.demo:
        return str(hf_checkpoint_dir(args.model_dir, args.cache_dir))
    # Imported only when asked for: the demo model is no part of serving a real checkpoint.
    from runtime.demo import build_demo_model

    return str(build_demo_model(args.demo, args.cache_dir))


def report_startup_when_ready(app: FastAPI, model_name: str) -> None:
    """Once the app has started (the server answers), log where the start-up's time went and
    publish it as kserve_llm:startup_seconds{phase}: "server" is from the model loaded to then.
    Then begin importing what structured outputs need, which start-up skipped (grammar_compiler.py)."""
    loaded_at = seconds_since_process_start()

    async def report() -> None:
        ready_at = seconds_since_process_start()
        STARTUP.record("server", ready_at - loaded_at)
        breakdown = STARTUP.breakdown(ready_at)
        set_startup_seconds(model_name, breakdown)
        logger.info("startup: %s", describe_startup(breakdown))
        import_tokenizer_support_in_background()

    chain_lifespan(app, after_startup=report)


def main() -> None:
    # Everything before this line: the interpreter starting and the imports.
    STARTUP.record("imports", seconds_since_process_start())
    parser = build_parser()
    args = parse_component_args(parser, logger.name, check_arguments)
    start_tracing(logger, "predictor", PREDICTOR_SERVICE)
    with exit_if_cannot_start(logger, "predictor", ConfigError, ModelLoadError, GGUFCheckpointError):
        with STARTUP.phase("checkpoint"):
            model_dir = checkpoint_dir(args)
        model = build_model(args, engine_config(args, model_dir))
        model.load()
    logger.info("serving model %r on http %d / grpc %d: max_queue=%s request_timeout=%s %s", model.name,
                args.http_port, args.grpc_port, args.max_queue, args.request_timeout, describe_server_limits(args))

    def install_routes(app: FastAPI) -> None:
        add_generate_routes(app, model)
        report_startup_when_ready(app, model.name)

    serve(model, args, install_routes)


if __name__ == "__main__":
    main()
