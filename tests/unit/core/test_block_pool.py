from __future__ import annotations

import pytest

from ember.core import NULL_BLOCK, BlockPool


def test_starts_with_every_block_but_the_null_block_free() -> None:
    pool = BlockPool(8)
    assert pool.capacity == pool.num_free == 7
    assert pool.usage == 0.0
    blocks = pool.allocate(7)
    assert sorted(blocks) == list(range(1, 8))
    assert NULL_BLOCK not in blocks
    assert pool.num_free == 0 and pool.usage == 1.0
    assert all(pool.ref_count(block) == 1 for block in blocks)


def test_allocating_more_than_free_raises() -> None:
    pool = BlockPool(4)
    pool.allocate(2)
    with pytest.raises(RuntimeError, match="asked for 2 blocks, 1 free"):
        pool.allocate(2)
    assert pool.num_free == 1


def test_reference_counts() -> None:
    pool = BlockPool(4)
    (block,) = pool.allocate(1)
    pool.touch([block, NULL_BLOCK])  # the null block is ignored
    assert pool.ref_count(block) == 2
    pool.free([block])
    assert pool.ref_count(block) == 1 and block not in pool.free_queue()
    pool.free([block, NULL_BLOCK])
    assert pool.ref_count(block) == 0 and block in pool.free_queue()
    assert pool.num_free == 3
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free([block])


def test_empty_blocks_are_reused_before_cached_ones() -> None:
    pool = BlockPool(5)
    a, b, c, d = pool.allocate(4)
    pool.mark_cached(a)
    pool.mark_cached(b)
    pool.free([a, c, b, d])
    # Empty blocks go to the front, cached ones to the back in the order freed.
    assert pool.free_queue()[2:] == [a, b]
    assert set(pool.allocate(2)) == {c, d}


def test_cached_blocks_are_evicted_least_recently_freed_first() -> None:
    pool = BlockPool(5)
    evicted: list[int] = []
    pool.set_evictor(evicted.append)
    blocks = pool.allocate(4)
    for block in blocks:
        pool.mark_cached(block)
    pool.free([blocks[2], blocks[0]])
    pool.free([blocks[3], blocks[1]])
    assert pool.allocate(3) == [blocks[2], blocks[0], blocks[3]]
    assert evicted == [blocks[2], blocks[0], blocks[3]]
    assert not pool.is_cached(blocks[2])
    assert pool.is_cached(blocks[1])


def test_a_hit_takes_a_cached_block_out_of_the_middle_of_the_queue() -> None:
    pool = BlockPool(5)
    a, b, c, d = pool.allocate(4)
    for block in (a, b, c):
        pool.mark_cached(block)
    pool.free([a, b, c])
    assert pool.free_queue() == [a, b, c]
    pool.touch([b])
    assert pool.free_queue() == [a, c]
    assert pool.num_free == 2 and pool.ref_count(b) == 1
    pool.free([b])  # now the most recently freed
    assert pool.free_queue() == [a, c, b]
    pool.free([d])
    assert pool.free_queue() == [d, a, c, b]


def test_uncaching_a_free_block_moves_it_to_the_front() -> None:
    pool = BlockPool(4)
    a, b, c = pool.allocate(3)
    for block in (a, b, c):
        pool.mark_cached(block)
    pool.free([a, b, c])
    pool.mark_uncached(c)
    assert pool.free_queue() == [c, a, b]
    pool.mark_uncached(c)  # idempotent
    assert pool.free_queue() == [c, a, b]


def test_needs_room_for_the_null_block() -> None:
    with pytest.raises(ValueError, match="num_blocks must be >= 2, got 1"):
        BlockPool(1)
