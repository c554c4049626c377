"""Engine configuration: one validated dataclass that every engine part reads."""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """An engine setting is out of range or inconsistent with another."""


DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")
DEVICE_NAMES = ("auto", "cpu", "cuda")
# Attention: "torch" gathers pages + SDPA (anywhere); "cpp" is the C++ CPU decode kernel
# (float32); "triton" runs paged decode and prefill kernels on CUDA.
ATTENTION_BACKEND_NAMES = ("auto", "torch", "cpp", "triton")
# Decode batch sizes captured as CUDA graphs by default (those up to max_num_seqs, plus
# max_num_seqs itself when it falls between two): dense where padding would double a
# small batch, every 16 rows above 32, where a padding row costs little.
DEFAULT_CUDA_GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, *range(48, 257, 16))
# Speculative decoding stops paying at this many sequences in a decode step. Measured with
# benchmarks/speculative_decoding.py on the 2-core CPU, the small task model drafting 4 tokens for
# the large one (BENCHMARKS.md): 1.02-1.34x at batch 1, 0.93-1.12x at 2 and 4, 0.72-0.99x at 8
# and 16. The draft's forward costs half the target's there (3 layers against 6, both so small
# that a forward costs its per-layer overhead), so a step's four drafts and its verification cost
# about three target forwards for at most five tokens; with more sequences fewer drafts are
# accepted, and the verification's B x (K+1) rows stop being nearly free.
DEFAULT_SPECULATIVE_DISABLE_BY_BATCH_SIZE = 2


@dataclass(slots=True)
class EngineConfig:
    """Settings of one engine instance.

    KV cache size comes from, in order: `num_kv_blocks`; `kv_cache_memory_bytes`;
    on a GPU, free memory x `gpu_memory_utilization` after a profiling pass;
    on the CPU, `DEFAULT_CPU_KV_CACHE_BYTES`.

    Decode steps run as CUDA graphs (one per size in `cuda_graph_batch_sizes`, a step padded
    to the next captured size) on CUDA with the triton attention backend, unless
    `enforce_eager`; prefill and mixed steps, and larger batches, always run eagerly.

    With `async_scheduling` (the default on CUDA) each step is scheduled and queued on the
    device before the previous step's tokens reach the host, so the host's work per step
    (scheduling, inputs, sampling setup, outputs) runs while the GPU computes; tokens come out
    one step later than they are computed (LLMEngine.step).

    Structured outputs compile against the tokenizer in `tokenizer` (default: the checkpoint
    directory `model`), in a pool beside the step loop; a compile that takes longer than
    `grammar_compile_timeout` seconds is refused, and the last `grammar_cache_size` compiled
    grammars are kept (grammar_compiler.py).

    With `speculative_model` (a checkpoint directory with the same vocabulary) the engine also
    runs that model as a draft with its own paged KV cache: in a step of decodes only, it proposes
    up to `num_speculative_tokens` tokens per sequence, which the target verifies in one forward
    pass (speculative.py). Steps of `speculative_disable_by_batch_size` sequences or more decode
    normally: from that batch on speculation was measured to cost more than it saves (see
    DEFAULT_SPECULATIVE_DISABLE_BY_BATCH_SIZE). Speculation needs async_scheduling off.
    """

    model: str
    dtype: str = "auto"
    device: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"
    # Bound on requests waiting to be scheduled (what counts as waiting: LLMEngine.check_queue_space);
    # None means unbounded (a server sets it).
    max_queue_size: int | None = None
    trust_remote_code: bool = False
    # Pickle checkpoints (.bin/.pt) can execute code when loaded: refused unless allowed.
    allow_pickle_weights: bool = False
    # torch intra-op threads for CPU inference; None keeps torch's default.
    num_threads: int | None = None
    enforce_eager: bool = False
    # None: DEFAULT_CUDA_GRAPH_BATCH_SIZES up to max_num_seqs (a sorted tuple after validation).
    cuda_graph_batch_sizes: tuple[int, ...] | None = None
    # Queue each step before the previous one's tokens reach the host (LLMEngine.step).
    # None: on with CUDA, off on the CPU.
    async_scheduling: bool | None = None
    # The time a step that holds running decodes aims to stay within: prompt chunks beside decodes
    # are sized to fit it (scheduler.py), so a long prompt cannot stall every stream's next token.
    # None: every step fills max_num_batched_tokens.
    decode_step_target_seconds: float | None = None
    # The fewest prompt tokens a step with decodes still computes (if any wait), so prompts progress.
    min_prefill_chunk_tokens: int = 64
    tokenizer: str | None = None
    grammar_compile_timeout: float = 10.0
    grammar_cache_size: int = 256
    speculative_model: str | None = None
    num_speculative_tokens: int | None = None
    speculative_disable_by_batch_size: int = DEFAULT_SPECULATIVE_DISABLE_BY_BATCH_SIZE

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model must name a checkpoint directory")
        _check_choice("dtype", self.dtype, DTYPE_NAMES)
        _check_choice("device", self.device, DEVICE_NAMES)
        _check_choice("attention_backend", self.attention_backend, ATTENTION_BACKEND_NAMES)
        _check_positive("block_size", self.block_size)
        _check_positive("max_num_seqs", self.max_num_seqs)
        _check_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _check_positive("min_prefill_chunk_tokens", self.min_prefill_chunk_tokens)
        target = self.decode_step_target_seconds
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                                   or not 0 < target < float("inf")):
            raise ConfigError(f"decode_step_target_seconds must be a positive number of seconds or None, got {target!r}")
        for name in ("num_kv_blocks", "kv_cache_memory_bytes", "max_model_len", "num_threads"):
            value = getattr(self, name)
            if value is not None:
                _check_positive(name, value)
        if self.max_queue_size is not None and self.max_queue_size < 0:
            raise ConfigError(f"max_queue_size must be >= 0 or None, got {self.max_queue_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if not isinstance(self.enforce_eager, bool):
            raise ConfigError(f"enforce_eager must be true or false, got {self.enforce_eager!r}")
        if self.async_scheduling is not None and not isinstance(self.async_scheduling, bool):
            raise ConfigError(f"async_scheduling must be true, false or unset, got {self.async_scheduling!r}")
        _check_positive("grammar_cache_size", self.grammar_cache_size)
        timeout = self.grammar_compile_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
            raise ConfigError(f"grammar_compile_timeout must be a positive number of seconds, got {timeout!r}")
        self.cuda_graph_batch_sizes = self._graph_batch_sizes()
        self._check_speculative()

    def _check_speculative(self) -> None:
        _check_positive("speculative_disable_by_batch_size", self.speculative_disable_by_batch_size)
        if not self.speculative_model:
            if self.num_speculative_tokens is not None:
                raise ConfigError("num_speculative_tokens is set but no speculative_model drafts the tokens")
            return
        if self.num_speculative_tokens is None:
            raise ConfigError("speculative_model needs num_speculative_tokens (the draft tokens proposed per step)")
        _check_positive("num_speculative_tokens", self.num_speculative_tokens)
        if self.async_scheduling:
            raise ConfigError("speculative decoding needs async_scheduling off: each step's draft starts from the "
                              "tokens the previous step accepted")

    def _graph_batch_sizes(self) -> tuple[int, ...]:
        if self.cuda_graph_batch_sizes is None:
            sizes = {size for size in DEFAULT_CUDA_GRAPH_BATCH_SIZES if size <= self.max_num_seqs}
            if self.max_num_seqs <= DEFAULT_CUDA_GRAPH_BATCH_SIZES[-1]:
                sizes.add(self.max_num_seqs)
            return tuple(sorted(sizes))
        if not isinstance(self.cuda_graph_batch_sizes, (list, tuple)) or not self.cuda_graph_batch_sizes:
            raise ConfigError(
                f"cuda_graph_batch_sizes must be a non-empty list of batch sizes, got {self.cuda_graph_batch_sizes!r}"
            )
        for size in self.cuda_graph_batch_sizes:
            _check_positive("each of cuda_graph_batch_sizes", size)
        largest = max(self.cuda_graph_batch_sizes)
        if largest > self.max_num_seqs:
            raise ConfigError(
                f"cuda_graph_batch_sizes go up to {largest}, but a step holds at most max_num_seqs={self.max_num_seqs}"
            )
        return tuple(sorted(set(self.cuda_graph_batch_sizes)))


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
