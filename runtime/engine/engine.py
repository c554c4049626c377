"""LLMEngine: the synchronous continuous-batching engine (add_request / step / abort / generate)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .block_manager import BlockManager, blocks_for_tokens
from .config import ConfigError, EngineConfig
from .cpu_allocator import keep_freed_memory_mapped
from .cuda_graphs import CudaGraphCapture, GraphCapture
from .errors import QueueFull, RequestRejected
from .grammar import Grammar
from .grammar_compiler import GrammarCompiler
from .model_loader import LoadedModel, ModelLoadError, adopt_model, load_model
from .model_runner import ModelRunner
from .outputs import RequestMetrics, RequestOutput
from .sampler import PendingSample, SampledTokens, Sampler
from .sampling_params import SamplingParams
from .scheduler import ScheduledSequence, Scheduler
from .sequence import FinishReason, Sequence, SequenceStatus
from .speculative import SpeculativeDecoder, SpeculativeStep
from .startup import STARTUP

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


@dataclass(slots=True)
class EngineStats:
    """A snapshot for metrics and readiness (names follow vLLM's Prometheus metrics)."""

    num_requests_running: int
    num_requests_waiting: int
    kv_cache_usage: float
    num_kv_blocks: int
    num_free_kv_blocks: int
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    # Speculative decoding (zero without a draft model): proposals, one per sequence and step;
    # the draft tokens they held; those the target accepted.
    spec_decode_num_drafts: int = 0
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0


@dataclass(slots=True)
class _LaunchedStep:
    """A step queued on the device: the requests it samples a token for, row by row."""

    seqs: list[Sequence]
    pending: PendingSample
    # Its tokens were handed to their requests early, by the next step (see _launch).
    fetched: bool = False


class LLMEngine:
    def __init__(
        self, config: EngineConfig, model: PreTrainedModel | None = None, draft_model: PreTrainedModel | None = None
    ) -> None:
        """Serve the checkpoint directory `config.model`; or, given `model`, that already-built
        transformers causal LM (on its device, in its dtype; `config.model` then only names it).
        `draft_model` likewise stands for `config.speculative_model`."""
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        started = time.monotonic()
        with STARTUP.phase("weight_load"):
            loaded = load_model(config) if model is None else adopt_model(model, config)
        self.device = loaded.device
        self.dtype = loaded.dtype
        # Loaded before the KV cache is sized, so that on a GPU its weights are not counted as free.
        draft = self._load_draft(draft_model)
        if self.device.type == "cpu":
            keep_freed_memory_mapped()
        self.vocab_size = loaded.vocab_size
        self.eos_token_ids = loaded.eos_token_ids
        self.max_model_len = self._resolve_max_model_len(loaded.max_position_embeddings)
        self.runner = ModelRunner(loaded, config.block_size, config.attention_backend, self.max_model_len)
        graph_capture = self._decode_graph_capture()
        uses_graphs = graph_capture is not None
        with STARTUP.phase("kv_cache"):
            # Decode graphs keep one cache block for their padding rows, outside the block manager.
            self.num_kv_blocks = self._resolve_num_kv_blocks(num_reserved_blocks=1 if uses_graphs else 0)
            self.runner.allocate_kv_cache(self.num_kv_blocks, padding_block=uses_graphs)
        with STARTUP.phase("warm_up"):
            self._warm_up(graph_capture)
        kv_capacity = self.num_kv_blocks * config.block_size
        if kv_capacity < self.max_model_len:
            logger.warning(
                "the KV cache holds %d tokens, fewer than max_model_len=%d: a request longer than the cache is "
                "refused (400); give the cache more memory or lower max_model_len", kv_capacity, self.max_model_len,
            )
        self.block_manager = BlockManager(self.num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager)
        self.speculator = None
        if draft is not None:
            with STARTUP.phase("warm_up"):
                self.speculator = SpeculativeDecoder(draft, config, self.runner, self.block_manager, self.vocab_size,
                                                     self.max_model_len)
        self.sampler = Sampler(self.eos_token_ids, self.vocab_size, self.device)
        self.grammar_compiler = GrammarCompiler(
            config.tokenizer or config.model, self.vocab_size, self.eos_token_ids, config.grammar_cache_size,
            config.grammar_compile_timeout, config.trust_remote_code,
        )
        self.async_scheduling = self._resolve_async_scheduling()
        # With async scheduling: the step launched last, whose tokens the next step() fetches.
        self._in_flight: _LaunchedStep | None = None
        self._requests: dict[str, Sequence] = {}
        self._arrival_counter = itertools.count()
        kv_bytes = self.num_kv_blocks * self.runner.kv_bytes_per_block
        logger.info(
            "engine ready in %.1fs: model=%s dtype=%s device=%s kv_blocks=%d x %d tokens (%.1f MiB, %d tokens) "
            "max_model_len=%d max_num_seqs=%d max_num_batched_tokens=%d prefix_caching=%s max_queue=%s "
            "attention=%s decode_graphs=%s async_scheduling=%s speculative=%s",
            time.monotonic() - started, config.model, str(self.dtype).removeprefix("torch."), self.device,
            self.num_kv_blocks, config.block_size, kv_bytes / 2**20, self.num_kv_blocks * config.block_size,
            self.max_model_len, config.max_num_seqs, config.max_num_batched_tokens,
            "on" if config.enable_prefix_caching else "off", config.max_queue_size,
            self.runner.attention_backend.name, self._decode_graph_summary(), "on" if self.async_scheduling else "off",
            self._speculative_summary(),
        )

    # Setup --------------------------------------------------------------------------

    def _warm_up(self, graph_capture: GraphCapture | None) -> None:
        """One full-budget prefill, then the decode graphs where they are used: the first
        request pays for neither."""
        config = self.config
        try:
            self.runner.warm_up(min(config.max_num_batched_tokens, self.max_model_len))
        except Exception as exc:
            raise ModelLoadError(f"{config.model} does not run on the paged KV cache: {exc}") from exc
        if graph_capture is None:
            return
        try:
            self.runner.capture_decode_graphs(config.cuda_graph_batch_sizes, self.max_model_len, graph_capture)
        except Exception as exc:
            raise ModelLoadError(f"capturing decode steps as CUDA graphs failed ({exc}); enforce_eager "
                                 "runs without them") from exc

    def _load_draft(self, draft_model: PreTrainedModel | None) -> LoadedModel | None:
        """The speculative draft model (config.speculative_model, or `draft_model` standing for it)."""
        config = self.config
        if not config.speculative_model:
            if draft_model is not None:
                raise ConfigError("a draft model was given but speculative_model does not name it")
            return None
        with STARTUP.phase("weight_load"):
            if draft_model is not None:
                return adopt_model(draft_model, config)
            return load_model(dataclasses.replace(config, model=config.speculative_model, speculative_model=None,
                                                  num_speculative_tokens=None))

    def _speculative_summary(self) -> str:
        config = self.config
        if self.speculator is None:
            return "off"
        return (f"{config.speculative_model} k={config.num_speculative_tokens} "
                f"below batch {config.speculative_disable_by_batch_size}")

    def _resolve_max_model_len(self, model_limit: int | None) -> int:
        asked = self.config.max_model_len
        if asked is None:
            if model_limit is None:
                raise ConfigError("the model config states no context length; set max_model_len")
            return model_limit
        if model_limit is not None and asked > model_limit:
            raise ConfigError(f"max_model_len={asked} exceeds the model's context length {model_limit}")
        return asked

    def _decode_graph_capture(self) -> GraphCapture | None:
        """How decode steps are captured as graphs; None when they run eagerly."""
        return None if self._eager_decode_reason() else CudaGraphCapture()

    def _eager_decode_reason(self) -> str | None:
        return "enforce_eager" if self.config.enforce_eager else self.runner.decode_graph_blocker()

    def _decode_graph_summary(self) -> str:
        graphs = self.runner.decode_graphs
        if graphs is None:
            return f"off ({self._eager_decode_reason()})"
        sizes = ",".join(map(str, graphs.batch_sizes))
        return f"{sizes} (captured in {graphs.capture_seconds:.1f}s)"

    def _resolve_async_scheduling(self) -> bool:
        """On where the device runs apart from the host (CUDA): there the host prepares the
        next step while the device computes this one. On the CPU the forward pass is the
        host's own work, so there is nothing to overlap, and a token would only come out one
        step later."""
        asked = self.config.async_scheduling
        if self.config.speculative_model:
            return False  # EngineConfig refuses it asked for with a draft
        return self.device.type == "cuda" if asked is None else asked

    def _resolve_num_kv_blocks(self, num_reserved_blocks: int) -> int:
        """Blocks for requests: `num_kv_blocks` as given, or what the memory budget holds after
        `num_reserved_blocks` that the runner keeps for itself."""
        config = self.config
        per_block = self.runner.kv_bytes_per_block
        if config.num_kv_blocks is not None:
            return config.num_kv_blocks
        if config.kv_cache_memory_bytes is not None:
            budget = config.kv_cache_memory_bytes
        elif self.device.type == "cuda":
            budget = self._free_gpu_memory_for_kv()
        else:
            # Never more than every sequence at full length could use.
            full_use = config.max_num_seqs * blocks_for_tokens(self.max_model_len, config.block_size) * per_block
            budget = min(DEFAULT_CPU_KV_CACHE_BYTES, full_use)
        num_blocks = budget // per_block - num_reserved_blocks
        if num_blocks < 1:
            raise ConfigError(f"the KV cache budget of {budget} bytes holds no block of {per_block} bytes for requests")
        return num_blocks

    def _free_gpu_memory_for_kv(self) -> int:
        peak = self.runner.profile_peak_memory(min(self.config.max_num_batched_tokens, self.max_model_len))
        free, total = torch.cuda.mem_get_info(self.device)
        used_outside_torch = total - free - torch.cuda.memory_reserved(self.device)
        budget = int(total * self.config.gpu_memory_utilization) - used_outside_torch - peak
        logger.info(
            "GPU memory: total %.1f GiB, peak during profiling %.2f GiB, KV budget %.2f GiB",
            total / 2**30, peak / 2**30, budget / 2**30,
        )
        return max(budget, 0)

    # Requests -----------------------------------------------------------------------

    def validate_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise RequestRejected if this request could never be served. Reads only config."""
        if not prompt_token_ids:
            raise RequestRejected("the prompt is empty; send at least one token id")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt_token_ids):
            raise RequestRejected("prompt token ids must be integers")
        low, high = min(prompt_token_ids), max(prompt_token_ids)
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise RequestRejected(f"token id {bad} is outside the vocabulary [0, {self.vocab_size - 1}]")
        total = len(prompt_token_ids) + params.max_tokens
        if total > self.max_model_len:
            raise RequestRejected(
                f"prompt ({len(prompt_token_ids)} tokens) + max_tokens ({params.max_tokens}) = {total} "
                f"exceeds max_model_len {self.max_model_len}"
            )
        needed = blocks_for_tokens(total, self.config.block_size)
        if needed > self.num_kv_blocks:
            raise RequestRejected(
                f"the request needs {needed} KV blocks at full length but the cache has {self.num_kv_blocks}; "
                f"at most {self.num_kv_blocks * self.config.block_size} tokens fit"
            )
        for token in params.stop_token_ids:
            if not 0 <= token < self.vocab_size:
                raise RequestRejected(f"stop token id {token} is outside the vocabulary [0, {self.vocab_size - 1}]")
        for token in params.logit_bias or ():
            if token >= self.vocab_size:
                raise RequestRejected(f"logit_bias token id {token} is outside the vocabulary [0, {self.vocab_size - 1}]")

    @property
    def num_waiting(self) -> int:
        """Requests in the scheduler's waiting queue: new ones, and preempted ones due to be recomputed."""
        return len(self.scheduler.waiting)

    def check_queue_space(self, num_arriving: int = 0) -> None:
        """Raise QueueFull when max_queue_size requests are waiting.

        The one place the bound is checked. Waiting means admitted and not running: in the
        scheduler's waiting queue (`num_waiting`), or among the `num_arriving` requests a caller
        has admitted but not yet handed to add_admitted_request (AsyncLLMEngine's on their way
        to its engine thread). Running requests do not count: max_num_seqs bounds those."""
        limit = self.config.max_queue_size
        if limit is not None and self.num_waiting + num_arriving >= limit:
            raise QueueFull(f"the waiting queue is full ({limit} requests); retry later")

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        priority: int = 0,
    ) -> None:
        """Queue a request; raises RequestRejected (bad input, id in use) or QueueFull."""
        params = params or SamplingParams()
        prompt_token_ids = list(prompt_token_ids)
        self._check_request_id(request_id)
        self.validate_request(prompt_token_ids, params)
        self.check_queue_space()
        self.add_admitted_request(request_id, prompt_token_ids, params, priority)

    def add_admitted_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int = 0,
        grammar: Grammar | None = None,
    ) -> None:
        """Queue a request its caller has already admitted (validate_request, check_queue_space):
        only a request id in use, or a structured output that does not compile, is refused
        (RequestRejected). `grammar` is the request's compiled structured output, when its caller
        compiled it off this thread (AsyncLLMEngine); otherwise it is compiled here."""
        self._check_request_id(request_id)
        if params.structured_output is not None and grammar is None:
            grammar = self.grammar_compiler.compile(params.structured_output)
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        seq = Sequence(
            request_id=request_id,
            prompt_token_ids=prompt_token_ids,
            params=params,
            arrival_order=next(self._arrival_counter),
            priority=priority,
            generator=generator,
            grammar=grammar,
        )
        self._requests[request_id] = seq
        self.scheduler.add(seq)

    def _check_request_id(self, request_id: str) -> None:
        if request_id in self._requests:
            raise RequestRejected(f"request id {request_id!r} is already in use")

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; returns its final output, or None if unknown."""
        seq = self._requests.get(request_id)
        if seq is None:
            return None
        return self._finish(seq, FinishReason.ABORT, new_token_ids=[])

    def abort_all(self, reason: FinishReason = FinishReason.ABORT, error: str | None = None) -> list[RequestOutput]:
        return [self._finish(seq, reason, new_token_ids=[], error=error) for seq in list(self._requests.values())]

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._requests)

    # Stepping -----------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, sample; returns outputs of requests that produced tokens.

        With async scheduling the tokens returned are those of the step launched by the
        previous call: this call schedules and queues its own step on the device first, then
        waits for the previous one's tokens, so the host's work of a step (scheduling, inputs,
        outputs) overlaps the device's work on another. Each running request is scheduled
        before its newest token is known; one that then turns out to have stopped has that
        step's token for it dropped (a row of wasted work, as in vLLM's async scheduling).

        With a draft model, a step the speculator takes (SpeculativeDecoder.plan) drafts, verifies
        and hands out up to K+1 tokens per sequence instead."""
        started = time.perf_counter()
        schedule = self.scheduler.schedule()
        if self.speculator is not None:
            for seq in schedule.preempted:
                self.speculator.free(seq)
            lengths = None if schedule.is_empty else self.speculator.plan(schedule.scheduled)
            if lengths is not None:
                return self._speculative_step(self.speculator.run(schedule.scheduled, lengths))
        previous, self._in_flight = self._in_flight, None
        outputs: list[RequestOutput] = []
        launched = None if schedule.is_empty else self._launch(schedule.scheduled, previous, outputs)
        if not self.async_scheduling:
            outputs = self._fetch(launched)
        else:
            outputs += self._fetch(previous)
            self._in_flight = launched
        if not schedule.is_empty:
            # With async scheduling the call's time is the previous step's on the device; in a
            # steady stream of steps that is close enough to this one's for sizing prompt chunks.
            self.scheduler.step_cost.observe(schedule.num_batched_tokens, time.perf_counter() - started)
        return outputs

    def _launch(
        self, scheduled: list[ScheduledSequence], previous: _LaunchedStep | None, early_outputs: list[RequestOutput]
    ) -> _LaunchedStep | None:
        """Queue the step's forward pass and sampling on the device; None if it samples nothing
        (prompt chunks that are not their prompt's last).

        A row with a structured output needs its grammar's mask, and so its previous token, before
        it is sampled. With async scheduling that token may still be on the device: then, once
        the forward pass is queued, the host waits for the previous step (already queued ahead of
        it) and hands its tokens out here, into `early_outputs`. This is the one host sync that
        structured outputs add, and only in steps that hold such a row: the device goes on with
        this step's forward pass meanwhile, and unconstrained batches never wait. Otherwise the
        masks' fill starts before the forward pass and runs beside it."""
        sampled = [item.seq for item in scheduled if item.completes_sequence]
        waits = previous is not None and any(seq.grammar is not None and seq.num_pending_tokens for seq in sampled)
        # The masks' fill runs on its own thread while the forward pass does, unless it needs tokens still being sampled.
        masks = None if waits else self.sampler.start_grammar_masks(sampled)
        sampling_items, logits = self.runner.execute(scheduled)
        seqs = [item.seq for item in sampling_items]
        if waits:
            early_outputs += self._fetch(previous)
            masks = self.sampler.start_grammar_masks(seqs)
        pending = self.sampler(logits, seqs, masks) if seqs else None
        # While the device still computes: none of this needs the new tokens.
        self._account_computed(scheduled)
        if pending is None:
            return None
        for row, seq in enumerate(seqs):
            seq.num_pending_tokens += 1
            seq.pending_token = (pending.token_ids, row)
        return _LaunchedStep(seqs, pending)

    def _speculative_step(self, step: SpeculativeStep) -> list[RequestOutput]:
        """Hand out a verified speculative step's tokens: the normal sampler's for the rows that
        did not speculate, the accepted runs for the others."""
        outputs = []
        if step.regular:
            pending = self.sampler(step.regular_logits, step.regular)
            for seq in step.regular:
                seq.num_pending_tokens += 1  # as _launch does: _append_tokens hands each its pending token
            outputs += self._append_tokens(step.regular, pending.fetch())
        for seq, accepted in zip(step.speculated, step.accepted):
            outputs.append(self._add_output_tokens(seq, accepted.token_ids, accepted.logprobs, accepted.top_logprobs))
        return outputs

    def _account_computed(self, scheduled: list[ScheduledSequence]) -> None:
        for item in scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            self.block_manager.register_full_blocks(item.seq)

    def _fetch(self, launched: _LaunchedStep | None) -> list[RequestOutput]:
        """Wait for a launched step's tokens and hand them to their requests (once)."""
        if launched is None or launched.fetched:
            return []
        launched.fetched = True
        return self._append_tokens(launched.seqs, launched.pending.fetch())

    def _append_tokens(self, seqs: list[Sequence], sampled: SampledTokens) -> list[RequestOutput]:
        outputs = []
        for row, (seq, token_id) in enumerate(zip(seqs, sampled.token_ids)):
            if seq.is_finished:
                continue  # stopped or aborted while this step ran: its token is dropped
            seq.num_pending_tokens -= 1
            if not seq.num_pending_tokens:
                seq.pending_token = None
            logprobs = None if sampled.logprobs is None else [sampled.logprobs[row]]
            top_logprobs = None if sampled.top_logprobs is None else [sampled.top_logprobs[row]]
            outputs.append(self._add_output_tokens(seq, [token_id], logprobs, top_logprobs))
        return outputs

    def _add_output_tokens(
        self,
        seq: Sequence,
        token_ids: list[int],
        logprobs: list[float] | None,
        top_logprobs: list[dict[int, float] | None] | None,
    ) -> RequestOutput:
        """Append newly sampled tokens to `seq` in order, up to the first that ends it (the rest,
        speculative tokens past a stop, are dropped); one output for those appended."""
        now = time.monotonic()
        block_size = self.config.block_size
        params = seq.params
        for index, token_id in enumerate(token_ids):
            seq.output_token_ids.append(token_id)
            num_known = seq.num_known_tokens
            if num_known % block_size == 0 and num_known <= seq.num_computed_tokens:
                # The KV of this token's block was computed before the host knew the token (async
                # scheduling, or an accepted speculative run): the block could not be published
                # then (its hash needs the token); it is now.
                self.block_manager.register_full_blocks(seq)
            if params.logprobs:
                seq.output_logprobs.append(logprobs[index])
                if params.top_logprobs:
                    seq.output_top_logprobs.append(top_logprobs[index])
            if seq.first_token_time is None:
                seq.first_token_time = now
            seq.last_token_time = now
            appended = token_ids[: index + 1]
            if seq.grammar is not None and not seq.grammar.accept(token_id):
                # Only when the grammar failed at a step (llguidance's per-step limits): the mask
                # allows nothing else.
                error = f"the structured output could not go on: {seq.grammar.error}"
                return self._finish(seq, FinishReason.ERROR, appended, error)
            reason = self._stop_reason(seq, token_id)
            if reason is not None:
                return self._finish(seq, reason, new_token_ids=appended)
        return self._make_output(seq, token_ids)

    def _stop_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        params = seq.params
        num_output = len(seq.output_token_ids)
        if num_output >= params.min_tokens:
            if token_id in params.stop_token_ids:
                return FinishReason.STOP
            if not params.ignore_eos and token_id in self.eos_token_ids:
                return FinishReason.STOP
        if seq.grammar is not None and seq.grammar.is_finished:
            return FinishReason.STOP
        if num_output >= params.max_tokens or seq.num_known_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(
        self, seq: Sequence, reason: FinishReason, new_token_ids: list[int], error: str | None = None
    ) -> RequestOutput:
        self.scheduler.finish(seq, reason)
        if self.speculator is not None:
            self.speculator.free(seq)
        del self._requests[seq.request_id]
        return self._make_output(seq, new_token_ids, error)

    def _make_output(self, seq: Sequence, new_token_ids: list[int], error: str | None = None) -> RequestOutput:
        num_output = len(seq.output_token_ids)
        new_logprobs = None
        if seq.params.logprobs:
            new_logprobs = seq.output_logprobs[num_output - len(new_token_ids):]
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_token_ids,
            new_token_ids=new_token_ids,
            finished=seq.is_finished,
            finish_reason=seq.finish_reason.value if seq.finish_reason else None,
            new_logprobs=new_logprobs,
            num_cached_tokens=seq.num_cached_prompt_tokens,
            metrics=RequestMetrics(
                arrival_time=seq.arrival_time,
                first_scheduled_time=seq.first_scheduled_time,
                first_token_time=seq.first_token_time,
                last_token_time=seq.last_token_time,
                finished_time=seq.finished_time,
                num_preemptions=seq.num_preemptions,
            ),
            generated=seq.generated,
            num_output_tokens=num_output,
            error=error,
        )

    # Convenience --------------------------------------------------------------------

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Run prompts to completion; outputs in input order."""
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params_list)} sampling params")
        for prompt, request_params in zip(prompts, params_list):
            self.validate_request(list(prompt), request_params)
        batch_id = next(self._arrival_counter)
        request_ids = [f"generate-{batch_id}-{index}" for index in range(len(prompts))]
        for request_id, prompt, request_params in zip(request_ids, prompts, params_list):
            self.add_request(request_id, prompt, request_params)
        finished: dict[str, RequestOutput] = {}
        while len(finished) < len(request_ids):
            for output in self.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[request_id] for request_id in request_ids]

    def stats(self) -> EngineStats:
        return EngineStats(
            num_requests_running=len(self.scheduler.running),
            num_requests_waiting=self.num_waiting,
            kv_cache_usage=self.block_manager.usage,
            num_kv_blocks=self.num_kv_blocks,
            num_free_kv_blocks=self.block_manager.num_free_blocks,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_queries=self.block_manager.prefix_cache_queries,
            prefix_cache_hits=self.block_manager.prefix_cache_hits,
            **self._speculative_stats(),
        )

    def _speculative_stats(self) -> dict[str, int]:
        if self.speculator is None:
            return {}
        stats = self.speculator.stats
        return {
            "spec_decode_num_drafts": stats.num_drafts,
            "spec_decode_num_draft_tokens": stats.num_draft_tokens,
            "spec_decode_num_accepted_tokens": stats.num_accepted_tokens,
        }

    def check_consistency(self) -> None:
        """Raise RuntimeError if block accounting disagrees with the live requests (tests, debugging)."""
        live = self.scheduler.live_sequences()
        if {seq.request_id for seq in live} != set(self._requests):
            raise RuntimeError("scheduler queues and the request table disagree")
        for seq in live:
            if seq.status is SequenceStatus.WAITING and seq.block_table:
                raise RuntimeError(f"waiting request {seq.request_id} holds blocks")
        self.block_manager.check_consistency(live)
        if self.speculator is not None:
            self.speculator.check_consistency(live)
