"""Turn a scheduled step into one packed forward pass over the paged KV cache.

The batch is a single row of tokens (no padding): decodes first, then prefill chunks,
with their positions, the cache slot of every new token, and the block tables the
attention layers read. Only the last token of each sequence that is due for a new
token goes through the LM head.
"""

from __future__ import annotations

import logging

import torch

from .attention import AttentionMetadata, PrefillChunk, select_decode_attention
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
        self.attention_backend, self.decode_attention = select_decode_attention(
            attention_backend, self.device, self.dtype
        )

    @property
    def kv_bytes_per_block(self) -> int:
        element_size = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * element_size

    def allocate_kv_cache(self, num_blocks: int) -> None:
        shape = (2, self.num_layers, num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        # Zeroed, not empty: attention gathers whole pages and masks the unused tail,
        # and a masked NaN from uninitialised memory would still poison the output.
        cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.kv_caches = [(cache[0, layer], cache[1, layer]) for layer in range(self.num_layers)]

    def profile_peak_memory(self, num_tokens: int) -> int:
        """Peak bytes allocated by a forward pass of `num_tokens` prompt tokens (CUDA only)."""
        self.allocate_kv_cache(-(-num_tokens // self.block_size))
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
        positions = torch.arange(num_tokens, device=self.device)
        meta = AttentionMetadata(
            kv_caches=self.kv_caches,
            slot_mapping=positions,
            num_decode_tokens=0,
            decode_block_tables=None,
            decode_mask=None,
            decode_context_lens=None,
            prefills=[PrefillChunk(0, num_tokens, 0, None)],
            decode_attention=self.decode_attention,
        )
        input_ids = torch.zeros(num_tokens, dtype=torch.long, device=self.device)
        self._forward(input_ids, positions, meta, torch.tensor([num_tokens - 1], device=self.device))

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
        meta = self._build_metadata(decodes, prefills, slots)
        device = self.device
        logits = self._forward(
            torch.tensor(input_ids, dtype=torch.long, device=device),
            torch.tensor(positions, dtype=torch.long, device=device),
            meta,
            torch.tensor(logits_indices, dtype=torch.long, device=device),
        )
        return sampling_items, logits

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
        self, decodes: list[ScheduledSequence], prefills: list[ScheduledSequence], slots: list[int]
    ) -> AttentionMetadata:
        device = self.device
        decode_block_tables = decode_mask = decode_context_lens = None
        if decodes:
            max_blocks = max(len(item.seq.block_table) for item in decodes)
            decode_block_tables = torch.tensor(
                [item.seq.block_table + [0] * (max_blocks - len(item.seq.block_table)) for item in decodes],
                dtype=torch.long,
                device=device,
            )
            decode_context_lens = torch.tensor(
                [item.seq.num_computed_tokens + 1 for item in decodes], dtype=torch.long, device=device
            )
            positions = torch.arange(max_blocks * self.block_size, device=device)
            decode_mask = (positions.unsqueeze(0) < decode_context_lens.unsqueeze(1)).view(len(decodes), 1, 1, -1)
        chunks = []
        query_start = len(decodes)
        for item in prefills:
            seq = item.seq
            block_table = None
            if seq.num_computed_tokens:
                num_blocks = -(-(seq.num_computed_tokens + item.num_new_tokens) // self.block_size)
                block_table = torch.tensor(seq.block_table[:num_blocks], dtype=torch.long, device=device)
            chunks.append(PrefillChunk(query_start, item.num_new_tokens, seq.num_computed_tokens, block_table))
            query_start += item.num_new_tokens
        return AttentionMetadata(
            kv_caches=self.kv_caches,
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
            num_decode_tokens=len(decodes),
            decode_block_tables=decode_block_tables,
            decode_mask=decode_mask,
            decode_context_lens=decode_context_lens,
            prefills=chunks,
            decode_attention=self.decode_attention,
        )
