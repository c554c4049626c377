"""Turn a scheduled step into one packed forward pass over the paged KV cache.

The batch is a single row of tokens (no padding): decodes first, then prefill chunks,
with their positions, the cache slot of every new token, and the block tables the
attention layers read. Only the last token of each sequence that is due for a new
token goes through the LM head. A step of decodes only that fits a captured batch size
replays a CUDA graph instead (cuda_graphs.py).
"""

from __future__ import annotations

import itertools
import logging

import torch

from .attention import AttentionMetadata, PrefillChunk, select_attention_backend
from .block_manager import blocks_for_tokens
from .cuda_graphs import DecodeGraphs, GraphCapture
from .model_loader import LoadedModel
from .models import LlamaFamilyForward
from .scheduler import ScheduledSequence

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, loaded: LoadedModel, block_size: int, attention_backend: str = "auto") -> None:
        self.model = loaded.model
        # Our own forward where we have one (faster); transformers' modules otherwise.
        self.fast_forward = LlamaFamilyForward(loaded.model) if LlamaFamilyForward.supports(loaded.model) else None
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.block_size = block_size
        self.num_layers = loaded.num_layers
        self.num_kv_heads = loaded.num_kv_heads
        self.head_dim = loaded.head_dim
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        # A cache block past the block manager's range, for decode graphs' padding rows.
        self.padding_block: int | None = None
        self.attention_backend = select_attention_backend(attention_backend, self.device, self.dtype)
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
        """Run one full-budget prefill into the (still unused) KV cache, so the first real
        step does not pay for one-off work: the allocator mapping activation memory,
        kernels initialising. The garbage it writes is overwritten before any block is read."""
        capacity = self.kv_caches[0][0].shape[0] * self.block_size
        self._dummy_prefill(min(num_tokens, capacity))

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
        ordered = decodes + prefills
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sampling_items: list[ScheduledSequence] = []
        logits_indices: list[int] = []
        for item in ordered:
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_new_tokens
            input_ids.extend(seq.tokens(start, end))
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // self.block_size] * self.block_size + p % self.block_size for p in range(start, end))
            if item.completes_sequence:
                sampling_items.append(item)
                logits_indices.append(len(input_ids) - 1)
        decode_tables = [item.seq.block_table for item in decodes]
        decode_context_lens = [item.seq.num_computed_tokens + 1 for item in decodes]
        graphs = self.decode_graphs
        if not prefills and graphs is not None and graphs.captured_size(len(decodes)) is not None:
            logits = graphs.run(input_ids, positions, slots, decode_tables, decode_context_lens)
            return sampling_items, self._sampled_rows(logits, logits_indices)
        meta = self._build_metadata(
            slots,
            decode_tables,
            decode_context_lens,
            [(item.seq.block_table, item.seq.num_computed_tokens, item.num_new_tokens) for item in prefills],
        )
        logits = self._forward(
            self._to_device(input_ids, torch.long),
            self._to_device(positions, torch.long),
            meta,
            self._to_device(logits_indices, torch.long),
        )
        return sampling_items, logits

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
        slots: list[int],
        decode_block_tables: list[list[int]],
        decode_context_lens: list[int],
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
            decode_max_context_len=max(decode_context_lens, default=0),
            prefills=[],
            backend=self.attention_backend,
        )
        if decode_context_lens:
            self._add_decodes(meta, decode_block_tables, decode_context_lens)
        if self.attention_backend.packed_prefill:
            if prefill_chunks:
                self._add_packed_prefills(meta, prefill_chunks)
        else:
            meta.prefills = self._prefill_chunk_list(prefill_chunks)
        return meta

    def _add_decodes(self, meta: AttentionMetadata, block_tables: list[list[int]], context_lens: list[int]) -> None:
        max_blocks = max(len(table) for table in block_tables)
        meta.decode_block_tables = self._to_device(_pad_rows(block_tables, max_blocks), torch.long)
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
        meta.prefill_block_tables = self._to_device(_pad_rows(tables, max(map(len, tables))), torch.int32)
        meta.prefill_query_start_loc = self._to_device(list(itertools.accumulate(query_lens, initial=0)), torch.int32)
        meta.prefill_context_lens = self._to_device([num_context for _, num_context, _ in prefill_chunks], torch.int32)
        meta.max_prefill_query_len = max(query_lens)

    def _to_device(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """A host list as a tensor on the model's device. On CUDA the copy is queued from pinned
        memory and does not wait for the GPU (torch keeps the pinned buffer until it is done)."""
        tensor = torch.tensor(values, dtype=dtype)
        if self.device.type == "cpu":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)


def _pad_rows(rows: list[list[int]], width: int) -> list[list[int]]:
    return [row + [0] * (width - len(row)) for row in rows]
