"""Paged KV blocks: a free list, reference counts, and prefix caching by chained block hashes.

A full block is identified by a 128-bit BLAKE2b hash of (previous block's hash, its
token ids), so equal hashes mean equal prefixes. A hit is also checked against the
block's stored token ids and parent hash, so neither a collision nor a crafted prompt
can be served KV that was computed after a different prefix. Freed blocks keep their
hash and stay reusable until the allocator evicts them, least recently freed first.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from .sequence import Sequence


def blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    """KV blocks that hold `num_tokens` tokens."""
    return -(-num_tokens // block_size)


@dataclass(slots=True)
class KVBlock:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    parent_hash: bytes | None = None
    token_ids: tuple[int, ...] | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        # Blocks with ref_count 0, in eviction order (front is evicted first).
        self.free_blocks: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached_blocks: dict[bytes, int] = {}
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live requests (cached-but-free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return blocks_for_tokens(num_tokens, self.block_size)

    # Prefix caching -------------------------------------------------------------------

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids that already hold a prefix of `seq`'s tokens.

        At least one token is always left to compute, so the step that admits the
        request produces logits for its next token.
        """
        if not self.enable_prefix_caching:
            return []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        self._extend_block_hashes(seq, max_blocks)
        hits: list[int] = []
        for index in range(max_blocks):
            block_id = self.cached_blocks.get(seq.block_hashes[index])
            if block_id is None:
                break
            block = self.blocks[block_id]
            start = index * self.block_size
            parent = seq.block_hashes[index - 1] if index else None
            if block.parent_hash != parent or block.token_ids != tuple(seq.tokens(start, start + self.block_size)):
                break
            hits.append(block_id)
        return hits

    def _extend_block_hashes(self, seq: Sequence, num_blocks: int) -> None:
        while len(seq.block_hashes) < num_blocks:
            index = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if index else b""
            start = index * self.block_size
            tokens = array("q", seq.tokens(start, start + self.block_size)).tobytes()
            seq.block_hashes.append(hashlib.blake2b(parent + tokens, digest_size=16).digest())

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publish blocks whose KV is now fully computed so later requests can share them.
        A block whose last token is still being sampled on the device waits for a later call:
        its hash needs that token's id."""
        if not self.enable_prefix_caching:
            return
        num_hashable = min(seq.num_computed_tokens, seq.num_known_tokens)
        num_full = min(num_hashable // self.block_size, len(seq.block_table))
        if num_full <= seq.num_hashed_blocks:
            return  # most steps: no block filled up
        self._extend_block_hashes(seq, num_full)
        for index in range(seq.num_hashed_blocks, num_full):
            block = self.blocks[seq.block_table[index]]
            if block.block_hash is not None:
                continue
            block_hash = seq.block_hashes[index]
            if block_hash in self.cached_blocks:
                # Another request computed the same prefix in the same step; keep the first.
                continue
            start = index * self.block_size
            block.block_hash = block_hash
            block.parent_hash = seq.block_hashes[index - 1] if index else None
            block.token_ids = tuple(seq.tokens(start, start + self.block_size))
            self.cached_blocks[block_hash] = block.block_id
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, num_full)

    # Allocation -----------------------------------------------------------------------

    def num_blocks_needed(
        self, seq: Sequence, num_new_tokens: int, cached_prefix: list[int] | tuple[int, ...] = ()
    ) -> int:
        """Free blocks that scheduling `num_new_tokens` more tokens of `seq` would consume.

        `cached_prefix` is what find_cached_prefix returned for a request not yet admitted.
        """
        if cached_prefix:
            num_computed, num_held = len(cached_prefix) * self.block_size, len(cached_prefix)
        else:
            num_computed, num_held = seq.num_computed_tokens, len(seq.block_table)
        num_new_blocks = max(self.blocks_for_tokens(num_computed + num_new_tokens) - num_held, 0)
        if not cached_prefix:
            return num_new_blocks
        # Cache hits sitting in the free list stop being free once taken.
        num_revived = sum(1 for block_id in cached_prefix if self.blocks[block_id].ref_count == 0)
        return num_new_blocks + num_revived

    def can_allocate(
        self, seq: Sequence, num_new_tokens: int, cached_prefix: list[int] | tuple[int, ...] = ()
    ) -> bool:
        return self.num_blocks_needed(seq, num_new_tokens, cached_prefix) <= self.num_free_blocks

    def take_cached_prefix(self, seq: Sequence, cached_prefix: list[int]) -> None:
        """Give a newly admitted request the cached blocks found for it."""
        self.prefix_cache_queries += seq.num_tokens
        self.prefix_cache_hits += len(cached_prefix) * self.block_size
        for block_id in cached_prefix:
            self._acquire(block_id)
        seq.block_table = list(cached_prefix)
        seq.num_hashed_blocks = len(cached_prefix)
        seq.num_computed_tokens = len(cached_prefix) * self.block_size
        seq.num_cached_prompt_tokens = min(seq.num_computed_tokens, seq.num_prompt_tokens)

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow `seq`'s block table to hold `num_new_tokens` more tokens; check can_allocate first."""
        total = self.blocks_for_tokens(seq.num_computed_tokens + num_new_tokens)
        while len(seq.block_table) < total:
            seq.block_table.append(self._allocate_block())

    def free(self, seq: Sequence) -> None:
        """Release `seq`'s blocks; the tail goes first so shared prefixes live longest."""
        self._release(seq.block_table)
        seq.block_table = []
        seq.num_hashed_blocks = 0

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Release `seq`'s blocks past those its first `num_tokens` tokens fill: the slots of
        speculative tokens that were rejected (speculative.py)."""
        keep = self.blocks_for_tokens(num_tokens)
        if len(seq.block_table) > keep:
            self._release(seq.block_table[keep:])
            seq.block_table = seq.block_table[:keep]

    def _release(self, block_ids: list[int]) -> None:
        for block_id in reversed(block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
                if block.block_hash is None:
                    # Uncached blocks are worthless once free: reuse them before cached ones.
                    self.free_blocks.move_to_end(block_id, last=False)

    def _acquire(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_blocks[block_id]
        block.ref_count += 1

    def _allocate_block(self) -> int:
        block_id, _ = self.free_blocks.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:
            if self.cached_blocks.get(block.block_hash) == block_id:
                del self.cached_blocks[block.block_hash]
            block.block_hash = None
            block.parent_hash = None
            block.token_ids = None
        block.ref_count = 1
        return block_id

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (e.g. after the weights change)."""
        for block_id in list(self.cached_blocks.values()):
            block = self.blocks[block_id]
            block.block_hash = None
            block.parent_hash = None
            block.token_ids = None
        self.cached_blocks.clear()

    # Invariants -----------------------------------------------------------------------

    def check_consistency(self, live_sequences: list[Sequence]) -> None:
        """Raise RuntimeError if the block accounting disagrees with the live requests."""
        expected = [0] * self.num_blocks
        for seq in live_sequences:
            if len(set(seq.block_table)) != len(seq.block_table):
                raise RuntimeError(f"request {seq.request_id} holds a block twice")
            for block_id in seq.block_table:
                expected[block_id] += 1
        for block in self.blocks:
            if block.ref_count != expected[block.block_id]:
                raise RuntimeError(
                    f"block {block.block_id} has ref_count {block.ref_count}, "
                    f"{expected[block.block_id]} references exist"
                )
            if (block.ref_count == 0) != (block.block_id in self.free_blocks):
                raise RuntimeError(f"block {block.block_id} free-list membership is wrong")
        for block_hash, block_id in self.cached_blocks.items():
            if self.blocks[block_id].block_hash != block_hash:
                raise RuntimeError(f"cached hash points at block {block_id} with another hash")
