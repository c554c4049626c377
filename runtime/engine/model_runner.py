"""Turn a scheduled step into one packed forward pass over the paged KV cache.

The batch is a single row of tokens (no padding): decodes first, then prefill chunks,
with their positions, the cache slot of every new token, and the block tables the
attention layers read. Only the last token of each sequence that is due for a new
token goes through the LM head. A step of decodes only that fits a captured batch size
replays a CUDA graph instead (cuda_graphs.py).

With async scheduling a decode's input token may not be on the host yet: the step before,
still running, samples it. Its row gets a placeholder, and the step's input ids take that
token from the earlier step's sampled ids on the device (DeviceTokens), so the host never
waits for it.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .attention import AttentionMetadata, PrefillChunk, select_attention_backend
from .block_manager import blocks_for_tokens
from .cpu_allocator import lazily_zeroed
from .cpu_linear import ONEDNN_MAX_ROWS, warm_up_cpu_linears
from .cuda_graphs import DecodeGraphs, GraphCapture
from .device_tokens import DeviceTokens
from .host_to_device import to_device
from .model_loader import LoadedModel
from .models import LlamaFamilyForward
from .scheduler import ScheduledSequence

logger = logging.getLogger(__name__)

# The host's stand-in for an input token the device has not handed over yet (any valid id).
PENDING_TOKEN_PLACEHOLDER = 0
# The CPU warm-up prefill: one row more than oneDNN's largest bucket, so it takes the MKL path that
# prefills take (see ModelRunner.warm_up).
CPU_WARM_UP_TOKENS = ONEDNN_MAX_ROWS + 1
# forward_chunks runs chunks up to this long as decode rows, one per token (speculative drafts
# and their verification); longer ones as prefill chunks.
MAX_DECODE_ROWS_CHUNK = 16


class ModelRunner:
    def __init__(self, loaded: LoadedModel, block_size: int, attention_backend: str = "auto",
                 max_positions: int | None = None) -> None:
        """`max_positions`: no sequence goes past this many tokens (the engine's max_model_len);
        tables indexed by position (the fused ops' RoPE) are built that long, not as long as the
        model's whole context."""
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.attention_backend = select_attention_backend(attention_backend, self.device, self.dtype)
        # Our own forward where we have one (faster); transformers' modules otherwise. Where
        # Triton runs the attention, it runs the norms, RoPE and activation too.
        self.fast_forward = None
        if loaded.weights is not None:
            self.fast_forward = LlamaFamilyForward(
                loaded.weights, fused_kernels=self.attention_backend.name == "triton", max_positions=max_positions
            )
        self.block_size = block_size
        self.num_layers = loaded.num_layers
        self.num_kv_heads = loaded.num_kv_heads
        self.head_dim = loaded.head_dim
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        # A cache block past the block manager's range, for decode graphs' padding rows.
        self.padding_block: int | None = None
        self.decode_graphs: DecodeGraphs | None = None

    @property
    def kv_bytes_per_block(self) -> int:
        element_size = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * element_size

    def allocate_kv_cache(self, num_blocks: int, padding_block: bool = False) -> None:
        """Blocks 0 .. num_blocks - 1 for requests, and with `padding_block` one more, owned by
        none, that decode graphs' padding rows write to."""
        self.padding_block = num_blocks if padding_block else None
        num_cache_blocks = num_blocks + 1 if padding_block else num_blocks
        shape = (2, self.num_layers, num_cache_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        # Zeroed, not empty: attention gathers whole pages and masks the unused tail,
        # and a masked NaN from uninitialised memory would still poison the output.
        if self.device.type == "cpu":
            cache = lazily_zeroed(shape, self.dtype)
        else:
            cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.kv_caches = [(cache[0, layer], cache[1, layer]) for layer in range(self.num_layers)]

    def profile_peak_memory(self, num_tokens: int) -> int:
        """Peak bytes allocated by a forward pass of `num_tokens` prompt tokens (CUDA only)."""
        self.allocate_kv_cache(blocks_for_tokens(num_tokens, self.block_size))
        torch.cuda.reset_peak_memory_stats(self.device)
        self._dummy_prefill(num_tokens)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        self.kv_caches = []
        torch.cuda.empty_cache()
        return peak

    def warm_up(self, num_tokens: int) -> None:
        """Run one prefill into the (still unused) KV cache, so the first real step does not
        pay for one-off work, and a model that cannot run on the paged cache fails now. On
        CUDA it is a full-budget one (`num_tokens`): the caching allocator reserves the
        activation memory, kernels initialise for the large shapes. On the CPU nothing of the
        kind depends on the prefill's size (MKL compiles nothing per shape), so a prefill
        just past oneDNN's row buckets, which takes MKL's path, does; oneDNN's kernels for
        the small buckets are compiled apart (cpu_linear.py). A full one there only cost
        start-up (0.6 s for the small demo model, then most of its warm-up). The garbage it writes is overwritten
        before any block is read."""
        capacity = self.kv_caches[0][0].shape[0] * self.block_size
        if self.device.type == "cpu":
            num_tokens = min(num_tokens, CPU_WARM_UP_TOKENS)
        self._dummy_prefill(min(num_tokens, capacity))
        if self.device.type == "cpu":
            warm_up_cpu_linears(self.fast_forward or self.model)

    def _dummy_prefill(self, num_tokens: int) -> None:
        block_table = list(range(blocks_for_tokens(num_tokens, self.block_size)))
        meta = self._build_metadata(list(range(num_tokens)), [], [], [(block_table, 0, num_tokens)])
        device = self.device
        input_ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
        positions = torch.arange(num_tokens, device=device)
        self._forward(input_ids, positions, meta, self._to_device([num_tokens - 1], torch.long))

    def decode_graph_blocker(self) -> str | None:
        """Why decode steps cannot be captured as CUDA graphs here; None when they can."""
        if self.device.type != "cuda":
            return "CUDA graphs need a CUDA device"
        if self.attention_backend.name != "triton":
            # The torch backend's gather would be sized for max_model_len under a graph.
            return f"only the triton attention backend is captured, not {self.attention_backend.name}"
        if self.fast_forward is None:
            return "graphs cover the llama-family forward; this model runs on transformers' modules"
        if self.fast_forward.rope_depends_on_longest_position:
            return "the model's RoPE scaling picks its frequencies from the longest position, on the host"
        return None

    def capture_decode_graphs(self, batch_sizes: tuple[int, ...], max_model_len: int, capture: GraphCapture) -> None:
        """Record a decode step at each batch size (after allocate_kv_cache(..., padding_block=True)):
        later all-decode steps that fit one replay it."""
        if self.padding_block is None:
            raise RuntimeError("decode graphs need a KV cache allocated with a padding block")
        self.decode_graphs = DecodeGraphs(
            self._forward, self.kv_caches, self.attention_backend, self.block_size, max_model_len,
            self.padding_block, batch_sizes, capture,
        )

    def execute(self, scheduled: list[ScheduledSequence]) -> tuple[list[ScheduledSequence], torch.Tensor]:
        """Run one step. Returns the items due for a new token, and their logits [n, vocab]."""
        decodes = [item for item in scheduled if item.num_new_tokens == 1]
        prefills = [item for item in scheduled if item.num_new_tokens > 1]
        rows = self._decode_rows(decodes)
        sampling_items, logits_indices = _sampling_rows(decodes + prefills)
        graphs = self.decode_graphs
        device_tokens = rows.device_tokens(self.device)
        if not prefills and graphs is not None and graphs.captured_size(len(decodes)) is not None:
            logits = graphs.run(
                rows.input_ids, rows.positions, rows.slots, rows.block_tables, rows.context_lens, device_tokens
            )
            return sampling_items, self._sampled_rows(logits, logits_indices)
        input_ids, positions, slots = self._packed_tokens(rows, prefills)
        meta = self._build_metadata(
            slots,
            rows.block_tables,
            rows.context_lens,
            [(item.seq.block_table, item.seq.num_computed_tokens, item.num_new_tokens) for item in prefills],
        )
        input_ids = self._to_device(input_ids, torch.long)
        if device_tokens is not None:
            device_tokens.write_into(input_ids)
        logits = self._forward(
            input_ids,
            self._to_device(positions, torch.long),
            meta,
            self._to_device(logits_indices, torch.long),
        )
        return sampling_items, logits

    def forward_chunks(self, chunks: list[TokenChunk]) -> torch.Tensor:
        """One forward pass over chunks of known tokens, each after the KV already cached in its
        block table (speculative decoding's draft and verification passes). Returns the logits
        of each chunk's last `num_logits` tokens, chunk after chunk [rows, vocab].

        Chunks of up to MAX_DECODE_ROWS_CHUNK tokens go first, each token a decode row that
        attends to the cache up to itself (the layer writes every new token's K/V before it
        attends): one batched decode kernel for all of them, and the same kernel normal decode
        steps run. Longer chunks (a draft catching up on a prompt) follow as prefill chunks."""
        order = sorted(range(len(chunks)), key=lambda index: len(chunks[index].token_ids) > MAX_DECODE_ROWS_CHUNK)
        first_token = [0] * len(chunks)
        input_ids: list[int] = []
        positions, slots, decode_tables, decode_lens, prefills = [], [], [], [], []
        for index in order:
            chunk = chunks[index]
            first_token[index] = len(input_ids)
            num_tokens = len(chunk.token_ids)
            input_ids.extend(chunk.token_ids)
            chunk_positions = np.arange(chunk.start, chunk.start + num_tokens, dtype=np.int64)
            block_ids = np.asarray(chunk.block_table, dtype=np.int64)[chunk_positions // self.block_size]
            positions.append(chunk_positions)
            slots.append(self._slots(block_ids, chunk_positions))
            if num_tokens <= MAX_DECODE_ROWS_CHUNK:
                decode_tables += [chunk.block_table] * num_tokens
                decode_lens.extend(chunk_positions + 1)
            else:
                prefills.append((chunk.block_table, chunk.start, num_tokens))
        logits_indices = [
            first_token[index] + offset
            for index, chunk in enumerate(chunks)
            for offset in range(len(chunk.token_ids) - chunk.num_logits, len(chunk.token_ids))
        ]
        meta = self._build_metadata(np.concatenate(slots), decode_tables, decode_lens, prefills)
        return self._forward(
            self._to_device(input_ids, torch.long),
            self._to_device(np.concatenate(positions), torch.long),
            meta,
            self._to_device(logits_indices, torch.long),
        )

    def _decode_rows(self, decodes: list[ScheduledSequence]) -> DecodeRows:
        """Items of one token: a decode, or a prompt chunk of one token."""
        block_size = self.block_size
        input_ids, positions, block_ids, block_tables = [], [], [], []
        pending_rows, source_rows = [], []
        source = None
        for row, item in enumerate(decodes):
            seq = item.seq
            position = seq.num_computed_tokens
            table = seq.block_table
            if position < seq.num_known_tokens:
                input_ids.append(seq.token_at(position))
            else:
                # Sampled by the step still running: only the device has it yet.
                step_tokens, source_row = seq.pending_token
                if source is not None and step_tokens is not source:
                    raise RuntimeError("decode inputs pending from two different steps; one step runs at a time")
                source = step_tokens
                input_ids.append(PENDING_TOKEN_PLACEHOLDER)
                pending_rows.append(row)
                source_rows.append(source_row)
            positions.append(position)
            block_ids.append(table[position // block_size])
            block_tables.append(table)
        position_array = np.array(positions, dtype=np.int64)
        slots = self._slots(np.array(block_ids, dtype=np.int64), position_array)
        return DecodeRows(input_ids, position_array, slots, block_tables, source, pending_rows, source_rows)

    def _packed_tokens(
        self, rows: DecodeRows, prefills: list[ScheduledSequence]
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Token ids, positions and cache slots of the whole step: decode rows, then prefill chunks."""
        input_ids = list(rows.input_ids)
        positions, slots = [rows.positions], [rows.slots]
        for item in prefills:
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_new_tokens
            input_ids.extend(seq.tokens(start, end))
            chunk_positions = np.arange(start, end, dtype=np.int64)
            block_ids = np.asarray(seq.block_table, dtype=np.int64)[chunk_positions // self.block_size]
            positions.append(chunk_positions)
            slots.append(self._slots(block_ids, chunk_positions))
        return input_ids, np.concatenate(positions), np.concatenate(slots)

    def _slots(self, block_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Flat cache slots of tokens at `positions`, each in the block `block_ids` names."""
        return block_ids * self.block_size + positions % self.block_size

    def _sampled_rows(self, logits: torch.Tensor, logits_indices: list[int]) -> torch.Tensor:
        """A graph computes logits for every row; keep those of the sequences due for a token
        (all of them, unless a prompt's one-token chunk is not its last)."""
        if len(logits_indices) == logits.shape[0]:
            return logits
        return logits[self._to_device(logits_indices, torch.long)]

    @torch.inference_mode()
    def _forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, logits_indices: torch.Tensor
    ) -> torch.Tensor:
        if self.fast_forward is not None:
            return self.fast_forward(input_ids, positions, meta, logits_indices)
        output = self.model(
            input_ids=input_ids.unsqueeze(0),
            position_ids=positions.unsqueeze(0),
            attention_metadata=meta,
            logits_to_keep=logits_indices,
            use_cache=False,
        )
        return output.logits[0]

    def _build_metadata(
        self,
        slots: Sequence[int],
        decode_block_tables: list[list[int]],
        decode_context_lens: Sequence[int],
        prefill_chunks: list[tuple[list[int], int, int]],
    ) -> AttentionMetadata:
        """Decode rows: their block tables and tokens attended (the new one included).
        Prefill chunks: (block table, tokens already cached, chunk length) each, in batch order."""
        meta = AttentionMetadata(
            kv_caches=self.kv_caches,
            slot_mapping=self._to_device(slots, torch.long),
            num_decode_tokens=len(decode_context_lens),
            decode_block_tables=None,
            decode_mask=None,
            decode_context_lens=None,
            decode_max_context_len=int(np.max(decode_context_lens, initial=0)),
            prefills=[],
            backend=self.attention_backend,
        )
        if len(decode_context_lens):
            self._add_decodes(meta, decode_block_tables, decode_context_lens)
        if self.attention_backend.packed_prefill:
            if prefill_chunks:
                self._add_packed_prefills(meta, prefill_chunks)
        else:
            meta.prefills = self._prefill_chunk_list(prefill_chunks)
        return meta

    def _add_decodes(
        self, meta: AttentionMetadata, block_tables: list[list[int]], context_lens: Sequence[int]
    ) -> None:
        max_blocks = max(len(table) for table in block_tables)
        meta.decode_block_tables = self._to_device(_padded_rows(block_tables, max_blocks), torch.long)
        meta.decode_context_lens = self._to_device(context_lens, torch.long)

    def _prefill_chunk_list(self, prefill_chunks: list[tuple[list[int], int, int]]) -> list[PrefillChunk]:
        chunks = []
        query_start = 0
        for block_table, num_context, query_len in prefill_chunks:
            table = None
            if num_context:
                num_blocks = blocks_for_tokens(num_context + query_len, self.block_size)
                table = self._to_device(block_table[:num_blocks], torch.long)
            chunks.append(PrefillChunk(query_start, query_len, num_context, table))
            query_start += query_len
        return chunks

    def _add_packed_prefills(self, meta: AttentionMetadata, prefill_chunks: list[tuple[list[int], int, int]]) -> None:
        tables = [block_table[: blocks_for_tokens(num_context + query_len, self.block_size)]
                  for block_table, num_context, query_len in prefill_chunks]
        query_lens = [query_len for _, _, query_len in prefill_chunks]
        meta.prefill_block_tables = self._to_device(_padded_rows(tables, max(map(len, tables))), torch.int32)
        meta.prefill_query_start_loc = self._to_device(list(itertools.accumulate(query_lens, initial=0)), torch.int32)
        meta.prefill_context_lens = self._to_device([num_context for _, num_context, _ in prefill_chunks], torch.int32)
        meta.max_prefill_query_len = max(query_lens)

    def _to_device(self, values: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return to_device(values, dtype, self.device)


@dataclass(slots=True)
class TokenChunk:
    """Tokens of one sequence for ModelRunner.forward_chunks: their ids, the position of the first
    (the KV of every earlier one is cached), the block table that holds them all, and how many of
    the last ones get logits."""

    token_ids: list[int]
    start: int
    block_table: list[int]
    num_logits: int = 1


@dataclass(slots=True)
class DecodeRows:
    """The step's one-token items, one row each: the token, its position and cache slot, and
    the sequence's block table. Rows `pending_rows` hold a placeholder token: theirs is
    `pending_source[source_rows[i]]`, sampled by the step still running."""

    input_ids: list[int]
    positions: np.ndarray
    slots: np.ndarray
    block_tables: list[list[int]]
    pending_source: torch.Tensor | None
    pending_rows: list[int]
    source_rows: list[int]

    @property
    def context_lens(self) -> np.ndarray:
        """Tokens each row attends: those before it and itself."""
        return self.positions + 1

    def device_tokens(self, device: torch.device) -> DeviceTokens | None:
        if self.pending_source is None:
            return None
        rows = to_device([self.pending_rows, self.source_rows], torch.long, device)
        return DeviceTokens(rows[0], self.pending_source, rows[1])


def _sampling_rows(ordered: list[ScheduledSequence]) -> tuple[list[ScheduledSequence], list[int]]:
    """The items due for a new token, and the index of each one's last token in the batch."""
    items, last_token_indices = [], []
    num_tokens = 0
    for item in ordered:
        num_tokens += item.num_new_tokens
        if item.completes_sequence:
            items.append(item)
            last_token_indices.append(num_tokens - 1)
    return items, last_token_indices


def _padded_rows(rows: list[list[int]], width: int) -> np.ndarray:
    """Rows of ints, each padded with 0 to `width`."""
    padded = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        padded[index, : len(row)] = row
    return padded
