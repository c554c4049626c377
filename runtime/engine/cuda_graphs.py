"""CUDA graphs for decode steps: a decode step replays one recorded forward pass instead of
launching its few hundred kernels one by one from Python, the cost that bounds a decode step
on a GPU at small and medium batch.

One graph is captured per configured batch size, all reading the same static input buffers.
A step whose every item adds one token runs the graph of the smallest captured size that holds
it. The rows past the step's own are padding: one-token sequences (token 0 at position 0) that
write their K/V into a spare block no request owns and attend only to that, so they never touch
a request's blocks. Prefill and mixed steps, and batches larger than every captured size, run
eagerly.

How a forward pass is recorded and replayed is a parameter (`GraphCapture`): on CUDA,
`CudaGraphCapture`; tests run the same logic on the CPU with a capture that reruns the forward
on the static buffers.
"""

from __future__ import annotations

import bisect
import functools
import time
from typing import Callable, Sequence

import numpy as np
import torch

from .attention import AttentionBackend, AttentionMetadata
from .block_manager import blocks_for_tokens
from .device_tokens import DeviceTokens

# forward(input_ids [rows], positions [rows], metadata, logits_indices [rows]) -> logits [rows, vocab]
DecodeForward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor], torch.Tensor]
# capture(run) runs `run` once, recording it, and returns (replay, output): replay() repeats the
# recorded work on whatever the static inputs then hold, leaving the result in `output`.
GraphCapture = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]

# A padding row is the one-token sequence [PADDING_TOKEN] at position 0.
PADDING_TOKEN = 0
# Per-row static inputs besides the block table: input id, position, slot, context length.
NUM_ROW_VECTORS = 4


class CudaGraphCapture:
    """Records forward passes as torch.cuda.CUDAGraphs that share one memory pool.

    Sharing is safe because graphs replay one at a time on one stream and each graph's output
    is read before the next replay (which may reuse the memory it sits in)."""

    def __init__(self) -> None:
        self.stream = torch.cuda.Stream()
        self.pool = None

    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        # One eager run first, on the capture stream: kernels compile and libraries set up their
        # per-stream state outside the recording.
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            run()
        torch.cuda.current_stream().wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a server thread touching CUDA meanwhile does not invalidate the capture.
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
            output = run()
        if self.pool is None:
            self.pool = graph.pool()
        return graph.replay, output


class DecodeGraphs:
    """Decode forwards captured at `batch_sizes`, with the static inputs they read.

    `padding_block` is a KV block outside the block manager's range, kept for padding rows.
    The attention launch is fixed at capture: each graph's is sized for its own batch size
    and for contexts up to `max_model_len` (the Triton decode kernel's split count), and
    block tables are `max_model_len` tokens wide.

    The static inputs are views of one device buffer, filled from a host copy of it in one
    transfer a step. The host copy keeps every row's block table between steps: a row is
    rewritten only when a different table lands in it, otherwise only the blocks its table
    gained since the last step are written (one every block_size steps)."""

    def __init__(
        self,
        forward: DecodeForward,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        attention_backend: AttentionBackend,
        block_size: int,
        max_model_len: int,
        padding_block: int,
        batch_sizes: tuple[int, ...],
        capture: GraphCapture,
    ) -> None:
        self.batch_sizes = tuple(sorted(batch_sizes))
        self.padding_block = padding_block
        self.padding_slot = padding_block * block_size
        # A padding row's input id, position, slot and context length.
        self._padding_row = (PADDING_TOKEN, 0, self.padding_slot, 1)
        self.max_model_len = max_model_len
        self._forward = forward
        self._kv_caches = kv_caches
        self._attention_backend = attention_backend
        self.device = kv_caches[0][0].device
        self._allocate_inputs(self.batch_sizes[-1], blocks_for_tokens(max_model_len, block_size))
        started = time.perf_counter()
        self.graphs: dict[int, tuple[Callable[[], None], torch.Tensor]] = {}
        # Largest first: the smaller graphs then fit in the memory the largest left in the pool.
        for size in reversed(self.batch_sizes):
            self.graphs[size] = capture(functools.partial(self._forward_rows, size))
        self.capture_seconds = time.perf_counter() - started

    def _allocate_inputs(self, max_rows: int, max_blocks: int) -> None:
        """Host and device buffers alike: input ids, positions, slots and context lengths
        ([max_rows] each), then the block tables [max_rows, max_blocks]; every row starts as
        padding. A step sends the prefix of the buffer its rows use."""
        self.max_blocks = max_blocks
        self._tables_offset = NUM_ROW_VECTORS * max_rows
        self._host_inputs = np.empty(self._tables_offset + max_rows * max_blocks, dtype=np.int64)
        host_rows, host_tables = np.split(self._host_inputs, [self._tables_offset])
        self._host_row_vectors = host_rows.reshape(NUM_ROW_VECTORS, max_rows)
        self._host_row_vectors[:] = np.array(self._padding_row)[:, None]
        self._host_block_tables = host_tables.reshape(max_rows, max_blocks)
        self._host_block_tables[:] = self.padding_block
        # What each host block-table row holds: whose table (the list itself), and how much of it.
        self._staged_tables: list[list[int] | None] = [None] * max_rows
        self._staged_lengths = [0] * max_rows
        self._device_inputs = torch.from_numpy(self._host_inputs).to(self.device, copy=True)
        device_rows, device_tables = self._device_inputs.split([self._tables_offset, max_rows * max_blocks])
        self.input_ids, self.positions, self.slot_mapping, self.context_lens = device_rows.view(NUM_ROW_VECTORS, max_rows)
        self.block_tables = device_tables.view(max_rows, max_blocks)
        self.logits_indices = torch.arange(max_rows, device=self.device)

    def captured_size(self, num_rows: int) -> int | None:
        """The smallest captured batch size that holds `num_rows` rows; None if none does."""
        index = bisect.bisect_left(self.batch_sizes, num_rows)
        return self.batch_sizes[index] if index < len(self.batch_sizes) else None

    @torch.inference_mode()
    def run(
        self,
        input_ids: Sequence[int],
        positions: Sequence[int],
        slots: Sequence[int],
        block_tables: list[list[int]],
        context_lens: Sequence[int],
        device_tokens: DeviceTokens | None = None,
    ) -> torch.Tensor:
        """Logits [rows, vocab] of one decode step (one row per sequence: its new token, the
        token's position and cache slot, its block table, and the tokens it attends, the new
        one included). `device_tokens` overwrites the input ids of rows whose token only the
        device has. The step must fit a captured size. The logits are a view of the graph's
        output: read them before the next run."""
        num_rows = len(input_ids)
        size = self.captured_size(num_rows)
        if size is None:
            raise ValueError(
                f"a decode step of {num_rows} rows exceeds the largest captured size {self.batch_sizes[-1]}"
            )
        self._copy_inputs(size, input_ids, positions, slots, block_tables, context_lens)
        if device_tokens is not None:
            device_tokens.write_into(self.input_ids)
        replay, logits = self.graphs[size]
        replay()
        return logits[:num_rows]

    def _copy_inputs(
        self,
        size: int,
        input_ids: Sequence[int],
        positions: Sequence[int],
        slots: Sequence[int],
        block_tables: list[list[int]],
        context_lens: Sequence[int],
    ) -> None:
        """The step's rows, then padding rows up to `size`, into the static inputs."""
        num_rows = len(input_ids)
        for vector, values, padding in zip(
            self._host_row_vectors, (input_ids, positions, slots, context_lens), self._padding_row
        ):
            vector[:num_rows] = values
            vector[num_rows:size] = padding
        self._stage_block_tables(block_tables, size)
        used = self._tables_offset + size * self.max_blocks
        staged = torch.from_numpy(self._host_inputs[:used])
        if self.device.type == "cuda":
            # Pinned, so the copy is queued without waiting; the pinned buffer is torch's to
            # recycle once the copy is done, so the host copy can change for the next step.
            staged = staged.pin_memory()
        self._device_inputs[:used].copy_(staged, non_blocking=True)

    def _stage_block_tables(self, block_tables: list[list[int]], size: int) -> None:
        """Rows hold their table, then padding_block; padding rows hold only padding_block.
        A sequence's block table only grows by appending, or is replaced by a new list
        (Sequence.block_table), so a row staged from the same list needs only its new tail."""
        host = self._host_block_tables
        staged_tables, staged_lengths = self._staged_tables, self._staged_lengths
        for row, table in enumerate(block_tables):
            if staged_tables[row] is not table or len(table) < staged_lengths[row]:
                host[row, : staged_lengths[row]] = self.padding_block
                staged_tables[row], staged_lengths[row] = table, 0
            start, end = staged_lengths[row], len(table)
            if start < end:
                host[row, start:end] = table[start:]
                staged_lengths[row] = end
        for row in range(len(block_tables), size):
            if staged_tables[row] is not None:
                host[row, : staged_lengths[row]] = self.padding_block
                staged_tables[row], staged_lengths[row] = None, 0

    def _forward_rows(self, num_rows: int) -> torch.Tensor:
        """The forward pass over the first `num_rows` static rows (what each graph records)."""
        rows = slice(0, num_rows)
        meta = AttentionMetadata(
            kv_caches=self._kv_caches,
            slot_mapping=self.slot_mapping[rows],
            num_decode_tokens=num_rows,
            decode_block_tables=self.block_tables[rows],
            decode_mask=None,
            decode_context_lens=self.context_lens[rows],
            decode_max_context_len=self.max_model_len,
            prefills=[],
            backend=self._attention_backend,
        )
        return self._forward(self.input_ids[rows], self.positions[rows], meta, self.logits_indices[rows])
