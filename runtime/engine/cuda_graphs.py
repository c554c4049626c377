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
from typing import Callable

import torch

from .attention import AttentionBackend, AttentionMetadata
from .block_manager import blocks_for_tokens

# forward(input_ids [rows], positions [rows], metadata, logits_indices [rows]) -> logits [rows, vocab]
DecodeForward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor], torch.Tensor]
# capture(run) runs `run` once, recording it, and returns (replay, output): replay() repeats the
# recorded work on whatever the static inputs then hold, leaving the result in `output`.
GraphCapture = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]

# A padding row is the one-token sequence [PADDING_TOKEN] at position 0.
PADDING_TOKEN = 0


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
    The attention launch is fixed at capture, so it is sized for `max_model_len` (the Triton
    decode kernel's split count), and block tables are `max_model_len` tokens wide."""

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
        self.max_model_len = max_model_len
        self._forward = forward
        self._kv_caches = kv_caches
        self._attention_backend = attention_backend
        self.device = kv_caches[0][0].device
        max_rows = self.batch_sizes[-1]
        as_index = dict(dtype=torch.long, device=self.device)
        self.input_ids = torch.full((max_rows,), PADDING_TOKEN, **as_index)
        self.positions = torch.zeros(max_rows, **as_index)
        self.slot_mapping = torch.full((max_rows,), self.padding_slot, **as_index)
        self.context_lens = torch.ones(max_rows, **as_index)
        max_blocks = blocks_for_tokens(max_model_len, block_size)
        self.block_tables = torch.full((max_rows, max_blocks), padding_block, **as_index)
        self.logits_indices = torch.arange(max_rows, device=self.device)
        started = time.perf_counter()
        self.graphs: dict[int, tuple[Callable[[], None], torch.Tensor]] = {}
        # Largest first: the smaller graphs then fit in the memory the largest left in the pool.
        for size in reversed(self.batch_sizes):
            self.graphs[size] = capture(functools.partial(self._forward_rows, size))
        self.capture_seconds = time.perf_counter() - started

    def captured_size(self, num_rows: int) -> int | None:
        """The smallest captured batch size that holds `num_rows` rows; None if none does."""
        index = bisect.bisect_left(self.batch_sizes, num_rows)
        return self.batch_sizes[index] if index < len(self.batch_sizes) else None

    @torch.inference_mode()
    def run(
        self,
        input_ids: list[int],
        positions: list[int],
        slots: list[int],
        block_tables: list[list[int]],
        context_lens: list[int],
    ) -> torch.Tensor:
        """Logits [rows, vocab] of one decode step (one row per sequence: its new token, the
        token's position and cache slot, its block table, and the tokens it attends, the new
        one included). The step must fit a captured size. The logits are a view of the graph's
        output: read them before the next run."""
        num_rows = len(input_ids)
        size = self.captured_size(num_rows)
        if size is None:
            raise ValueError(
                f"a decode step of {num_rows} rows exceeds the largest captured size {self.batch_sizes[-1]}"
            )
        self._copy_inputs(size, input_ids, positions, slots, block_tables, context_lens)
        replay, logits = self.graphs[size]
        replay()
        return logits[:num_rows]

    def _copy_inputs(
        self,
        size: int,
        input_ids: list[int],
        positions: list[int],
        slots: list[int],
        block_tables: list[list[int]],
        context_lens: list[int],
    ) -> None:
        """The step's rows, then padding rows up to `size`. Block-table columns past the step's
        widest table keep what earlier steps left there: valid block ids that no row reads."""
        num_padding = size - len(input_ids)
        per_row = self._host_tensor([
            input_ids + [PADDING_TOKEN] * num_padding,
            positions + [0] * num_padding,
            slots + [self.padding_slot] * num_padding,
            context_lens + [1] * num_padding,
        ])
        for target, values in zip((self.input_ids, self.positions, self.slot_mapping, self.context_lens), per_row):
            target[:size].copy_(values, non_blocking=True)
        width = max(map(len, block_tables))
        padded = [table + [self.padding_block] * (width - len(table)) for table in block_tables]
        padded += [[self.padding_block] * width] * num_padding
        self.block_tables[:size, :width].copy_(self._host_tensor(padded), non_blocking=True)

    def _host_tensor(self, rows: list[list[int]]) -> torch.Tensor:
        """Rows of ints on the host; pinned for a CUDA device, so the copy does not wait for it."""
        tensor = torch.tensor(rows, dtype=torch.long)
        return tensor if self.device.type == "cpu" else tensor.pin_memory()

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
