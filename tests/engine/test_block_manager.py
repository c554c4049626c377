"""BlockManager on real Sequences: block tables, reference counts, prefix-cache hits and
their safety, eviction order, revival of freed cached blocks, and the invariant check."""

from __future__ import annotations

import pytest

from runtime.engine.block_manager import BlockManager
from runtime.engine.sampling_params import SamplingParams
from runtime.engine.sequence import Sequence

BLOCK_SIZE = 4


def make_seq(tokens: list[int], index: int = 0) -> Sequence:
    return Sequence(request_id=f"r{index}", prompt_token_ids=list(tokens), params=SamplingParams(), arrival_order=index)


def admit(manager: BlockManager, seq: Sequence) -> list[int]:
    """Admit a waiting request the way the scheduler does; returns its prefix-cache hits."""
    hits = manager.find_cached_prefix(seq)
    manager.take_cached_prefix(seq, hits)
    manager.allocate_slots(seq, seq.num_tokens - seq.num_computed_tokens)
    return hits


def compute(manager: BlockManager, seq: Sequence) -> None:
    """Mark every token of `seq` computed and publish its full blocks, as a finished step does."""
    seq.num_computed_tokens = seq.num_tokens
    manager.register_full_blocks(seq)


def tokens(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


def test_allocation_grows_the_block_table_one_block_per_block_size_tokens():
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    seq = make_seq(tokens(10, 5))
    admit(manager, seq)
    assert len(seq.block_table) == 2
    assert manager.num_free_blocks == 6
    # Decode one token at a time: a new block exactly when the previous one is full.
    table_sizes = []
    for token in range(3, 8):
        seq.num_computed_tokens = seq.num_tokens
        seq.output_token_ids.append(token)
        manager.allocate_slots(seq, 1)
        table_sizes.append(len(seq.block_table))
        manager.check_consistency([seq])
    # After the appends the sequence holds 6, 7, 8, 9, 10 tokens.
    assert table_sizes == [2, 2, 2, 3, 3]
    assert len(set(seq.block_table)) == 3
    assert manager.num_free_blocks == 5


def test_free_returns_every_block():
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    first, second = make_seq(tokens(10, 9), 0), make_seq(tokens(50, 3), 1)
    admit(manager, first)
    admit(manager, second)
    assert manager.num_free_blocks == 4
    manager.free(first)
    assert first.block_table == []
    assert manager.num_free_blocks == 7
    manager.check_consistency([second])
    manager.free(second)
    assert manager.num_free_blocks == 8
    assert manager.usage == 0.0
    manager.check_consistency([])


def test_a_shared_prefix_is_held_once_and_reference_counted():
    manager = BlockManager(num_blocks=10, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    prefix = tokens(100, 3 * BLOCK_SIZE)
    first, second = make_seq(prefix + [7, 8], 0), make_seq(prefix + [9, 9, 9], 1)
    assert admit(manager, first) == []
    compute(manager, first)

    hits = admit(manager, second)
    assert hits == first.block_table[:3]
    assert second.block_table[:3] == hits
    assert second.num_computed_tokens == 3 * BLOCK_SIZE
    assert second.num_cached_prompt_tokens == 3 * BLOCK_SIZE
    assert [manager.blocks[block_id].ref_count for block_id in hits] == [2, 2, 2]
    # 4 blocks for the first request, 1 more (its own tail) for the second.
    assert manager.num_free_blocks == 10 - 5
    manager.check_consistency([first, second])

    manager.free(first)
    assert [manager.blocks[block_id].ref_count for block_id in hits] == [1, 1, 1]
    assert manager.num_free_blocks == 10 - 4
    manager.check_consistency([second])
    manager.free(second)
    assert manager.num_free_blocks == 10
    manager.check_consistency([])


def test_only_blocks_whose_kv_is_computed_are_shared():
    manager = BlockManager(num_blocks=10, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    prompt = tokens(100, 3 * BLOCK_SIZE + 1)
    first = make_seq(prompt, 0)
    admit(manager, first)
    # A chunked prefill has computed 1.5 blocks so far: only the first is full and shareable.
    first.num_computed_tokens = BLOCK_SIZE + BLOCK_SIZE // 2
    manager.register_full_blocks(first)
    assert manager.find_cached_prefix(make_seq(prompt, 1)) == first.block_table[:1]
    compute(manager, first)
    assert manager.find_cached_prefix(make_seq(prompt, 2)) == first.block_table[:3]


@pytest.mark.parametrize(
    "prompt_len, expected_hits",
    [(2 * BLOCK_SIZE, 1), (2 * BLOCK_SIZE + 1, 2), (1, 0), (BLOCK_SIZE, 0)],
)
def test_at_least_one_token_is_always_left_to_compute(prompt_len, expected_hits):
    manager = BlockManager(num_blocks=10, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    prompt = tokens(100, prompt_len)
    first = make_seq(prompt, 0)
    admit(manager, first)
    compute(manager, first)
    again = make_seq(prompt, 1)
    hits = admit(manager, again)
    assert len(hits) == expected_hits
    assert again.num_uncomputed_tokens >= 1
    assert again.num_computed_tokens == expected_hits * BLOCK_SIZE


def collide(seq: Sequence, block_hashes: list[int]) -> Sequence:
    """Give `seq` these block hashes, as if its chained hashes collided with theirs."""
    seq.block_hashes = list(block_hashes)
    return seq


def test_same_hash_with_different_tokens_is_not_a_hit():
    manager = BlockManager(num_blocks=10, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    first = make_seq(tokens(100, 2 * BLOCK_SIZE + 1), 0)
    admit(manager, first)
    compute(manager, first)

    stranger = collide(make_seq(tokens(200, 2 * BLOCK_SIZE + 1), 1), first.block_hashes)
    assert admit(manager, stranger) == []
    assert stranger.num_computed_tokens == 0
    same_start = collide(make_seq(tokens(100, BLOCK_SIZE) + tokens(300, BLOCK_SIZE + 1), 2), first.block_hashes)
    assert admit(manager, same_start) == first.block_table[:1]
    manager.check_consistency([first, stranger, same_start])


def test_same_hash_with_the_same_tokens_after_another_prefix_is_not_a_hit():
    # A block's KV depends on every token before it, not only on its own tokens: a colliding
    # block that holds the same tokens after another prefix must not be served.
    manager = BlockManager(num_blocks=10, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    middle = [7] * BLOCK_SIZE
    first = make_seq([1, 2, 3, 4] + middle + [9], 0)
    other_start = make_seq([5, 6, 7, 8, 9], 1)
    for seq in (first, other_start):
        admit(manager, seq)
        compute(manager, seq)

    query = make_seq([5, 6, 7, 8] + middle + [9], 2)
    collide(query, [other_start.block_hashes[0], first.block_hashes[1]])
    # Block 0 is a true hit; block 1's cached KV was computed after [1, 2, 3, 4], not [5, 6, 7, 8].
    assert admit(manager, query) == other_start.block_table[:1]


def test_a_cached_block_whose_tokens_differ_is_not_served():
    manager = BlockManager(num_blocks=10, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    prompt = tokens(100, 3 * BLOCK_SIZE + 1)
    first = make_seq(prompt, 0)
    admit(manager, first)
    compute(manager, first)
    manager.blocks[first.block_table[1]].token_ids = (999,) * BLOCK_SIZE
    assert manager.find_cached_prefix(make_seq(prompt, 1)) == first.block_table[:1]


def test_eviction_takes_uncached_blocks_first_then_the_least_recently_freed():
    manager = BlockManager(num_blocks=6, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    # Each request: 2 full (cached) blocks and a partial (uncached) tail block.
    older, newer = make_seq(tokens(100, 2 * BLOCK_SIZE + 1), 0), make_seq(tokens(200, 2 * BLOCK_SIZE + 1), 1)
    for seq in (older, newer):
        admit(manager, seq)
        compute(manager, seq)
    older_blocks, newer_blocks = list(older.block_table), list(newer.block_table)
    manager.free(older)
    manager.free(newer)
    assert manager.num_free_blocks == 6

    taker = make_seq(tokens(300, 3 * BLOCK_SIZE), 2)
    admit(manager, taker)
    # Both uncached tails first, then the older request's blocks, its tail block before its head.
    assert taker.block_table == [newer_blocks[2], older_blocks[2], older_blocks[1]]
    assert manager.find_cached_prefix(make_seq(older.prompt_token_ids, 3)) == older_blocks[:1]
    assert manager.find_cached_prefix(make_seq(newer.prompt_token_ids, 4)) == newer_blocks[:2]
    manager.check_consistency([taker])


def test_freed_cached_blocks_are_revived_by_a_later_hit():
    manager = BlockManager(num_blocks=3, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    prompt = tokens(100, 2 * BLOCK_SIZE + 1)
    first = make_seq(prompt, 0)
    admit(manager, first)
    compute(manager, first)
    head = first.block_table[:2]
    manager.free(first)
    assert manager.num_free_blocks == 3

    again = make_seq(prompt, 1)
    hits = manager.find_cached_prefix(again)
    assert hits == head
    # One new block for the last token plus the two revived blocks leaving the free list.
    assert manager.num_blocks_needed(again, 1, hits) == 3
    assert manager.can_allocate(again, 1, hits)
    manager.take_cached_prefix(again, hits)
    manager.allocate_slots(again, 1)
    assert again.block_table[:2] == head
    assert manager.num_free_blocks == 0
    manager.check_consistency([again])


def test_revived_blocks_count_against_the_free_blocks():
    manager = BlockManager(num_blocks=4, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    prompt = tokens(100, 2 * BLOCK_SIZE + 1)
    first = make_seq(prompt, 0)
    admit(manager, first)
    compute(manager, first)
    manager.free(first)
    holder = make_seq(tokens(300, BLOCK_SIZE + 1), 1)
    admit(manager, holder)
    # The holder took the uncached tail and the spare block; the 2 free blocks are the cached head.
    assert manager.num_free_blocks == 2

    again = make_seq(prompt, 2)
    hits = manager.find_cached_prefix(again)
    assert len(hits) == 2
    assert manager.num_blocks_needed(again, 1, hits) == 3
    assert not manager.can_allocate(again, 1, hits)
    manager.free(holder)
    assert manager.can_allocate(again, 1, hits)


def test_check_consistency_catches_corrupted_accounting():
    manager = BlockManager(num_blocks=4, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    seq = make_seq(tokens(100, 5))
    admit(manager, seq)
    manager.check_consistency([seq])

    manager.blocks[seq.block_table[0]].ref_count += 1
    with pytest.raises(RuntimeError, match="ref_count 2, 1 references exist"):
        manager.check_consistency([seq])
    manager.blocks[seq.block_table[0]].ref_count -= 1

    with pytest.raises(RuntimeError, match="ref_count"):
        manager.check_consistency([])  # the request's blocks are held by nobody it knows of

    seq.block_table.append(seq.block_table[0])
    with pytest.raises(RuntimeError, match="holds a block twice"):
        manager.check_consistency([seq])


def test_prefix_cache_stats_count_tokens():
    manager = BlockManager(num_blocks=10, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    prompt = tokens(100, 2 * BLOCK_SIZE + 3)
    first = make_seq(prompt, 0)
    admit(manager, first)
    compute(manager, first)
    assert (manager.prefix_cache_queries, manager.prefix_cache_hits) == (11, 0)
    admit(manager, make_seq(prompt, 1))
    assert (manager.prefix_cache_queries, manager.prefix_cache_hits) == (22, 8)
    admit(manager, make_seq(tokens(500, 6), 2))
    assert (manager.prefix_cache_queries, manager.prefix_cache_hits) == (28, 8)


def test_without_prefix_caching_nothing_is_shared():
    manager = BlockManager(num_blocks=10, block_size=BLOCK_SIZE, enable_prefix_caching=False)
    prompt = tokens(100, 3 * BLOCK_SIZE)
    first = make_seq(prompt, 0)
    admit(manager, first)
    compute(manager, first)
    assert manager.cached_blocks == {}
    second = make_seq(prompt, 1)
    assert admit(manager, second) == []
    assert set(first.block_table).isdisjoint(second.block_table)


def test_reset_prefix_cache_forgets_every_prefix():
    manager = BlockManager(num_blocks=10, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    prompt = tokens(100, 3 * BLOCK_SIZE)
    first = make_seq(prompt, 0)
    admit(manager, first)
    compute(manager, first)
    manager.free(first)
    manager.reset_prefix_cache()
    assert manager.find_cached_prefix(make_seq(prompt, 1)) == []
    manager.check_consistency([])


def test_trim_gives_back_the_blocks_past_the_kept_tokens_and_keeps_shared_ones():
    """Speculative decoding's rollback: slots allocated for draft tokens that were rejected go
    back to the free list, uncached ones first in line for reuse; cached prefix blocks stay."""
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    first = make_seq(tokens(10, 8))
    admit(manager, first)
    compute(manager, first)
    seq = make_seq(tokens(10, 9), index=1)
    assert len(admit(manager, seq)) == 2
    manager.allocate_slots(seq, 9 - seq.num_computed_tokens + 7)  # the 9th token and 7 drafts: 4 blocks
    table = seq.block_table
    assert len(table) == 4
    manager.trim(seq, 10)
    assert seq.block_table == table[:3] and seq.block_table is not table  # replaced, not cut in place
    assert next(iter(manager.free_blocks)) == table[3]
    manager.trim(seq, 12)  # nothing past 3 blocks to give back
    assert seq.block_table == table[:3]
    manager.check_consistency([first, seq])
    manager.free(seq)
    manager.free(first)
    assert manager.num_free_blocks == 8
    manager.check_consistency([])
