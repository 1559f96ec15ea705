from __future__ import annotations

from ember.core import NULL_BLOCK, CacheConfig, KVCacheManager, KVGroupSpec, Request

SIZE = 4
FULL = KVGroupSpec()


def manager(
    num_blocks: int = 32, groups: list[KVGroupSpec] | None = None, caching: bool = True
) -> KVCacheManager:
    return KVCacheManager(
        CacheConfig(block_size=SIZE, num_blocks=num_blocks, enable_prefix_caching=caching),
        groups or [FULL],
    )


def advance(kv: KVCacheManager, request: Request, count: int) -> None:
    """Compute `count` more tokens of the request, as one step would."""
    assert kv.allocate_slots(request, count) is not None
    request.num_computed_tokens += count
    kv.cache_blocks(request)


def test_allocates_whole_blocks_and_frees_them() -> None:
    kv = manager()
    request = Request("a", list(range(10)))
    new = kv.allocate_slots(request, 10)
    assert new is not None and len(new[0]) == 3
    assert kv.block_tables("a") == new
    assert kv.num_free_blocks == 31 - 3
    request.num_computed_tokens = 10
    assert kv.allocate_slots(request, 2) == [[]]  # still inside the third block
    extra = kv.allocate_slots(request, 3)
    assert extra is not None and len(extra[0]) == 1
    assert kv.block_tables("a") == [new[0] + extra[0]]
    kv.free(request)
    assert kv.num_free_blocks == 31 and kv.usage == 0.0
    assert not kv.has_blocks("a")


def test_allocation_is_all_or_nothing_across_groups() -> None:
    kv = manager(num_blocks=6, groups=[FULL, KVGroupSpec(num_layers=2)])  # 5 usable
    request = Request("a", list(range(12)))  # 3 blocks per group = 6 blocks
    assert kv.allocate_slots(request, 12) is None
    assert kv.num_free_blocks == 5 and not kv.has_blocks("a")
    assert kv.allocate_slots(request, 8) is not None  # 2 + 2
    assert kv.num_free_blocks == 1
    request.num_computed_tokens = 8
    assert kv.allocate_slots(request, 4) is None  # needs 1 + 1
    assert kv.num_free_blocks == 1 and [len(t) for t in kv.block_tables("a")] == [2, 2]


def test_sliding_window_frees_blocks_behind_the_window() -> None:
    window = 8
    kv = manager(num_blocks=64, groups=[FULL, KVGroupSpec(sliding_window=window)])
    request = Request("a", list(range(100)))
    advance(kv, request, 20)
    for _ in range(60):  # decode-sized steps
        start = request.num_computed_tokens
        advance(kv, request, 1)
        full, sliding = kv.block_tables("a")
        assert NULL_BLOCK not in full and len(full) == len(sliding)
        # Still held: every block the query at `start` reads (keys start - 7 .. start).
        first_needed = (start - window + 1) // SIZE
        assert all(block == NULL_BLOCK for block in sliding[:first_needed])
        assert all(block != NULL_BLOCK for block in sliding[first_needed:])
        assert len(sliding) - first_needed <= -(-(window - 1 + 1) // SIZE) + 1
    assert kv.num_free_blocks == 63 - len(full) - (len(sliding) - first_needed)
    kv.free(request)
    assert kv.num_free_blocks == 63


def test_max_blocks_held_bounds_what_a_request_can_hold() -> None:
    kv = manager(groups=[FULL, KVGroupSpec(sliding_window=8)])
    assert kv.max_blocks_held(100, max_chunk=1) == 25 + 3
    assert kv.max_blocks_held(100, max_chunk=16) == 25 + 7
    assert kv.max_blocks_held(10, max_chunk=16) == 3 + 3


def test_prefix_hit_leaves_the_last_token_to_compute() -> None:
    kv = manager()
    first = Request("a", list(range(12)))
    advance(kv, first, 12)
    blocks = kv.block_tables("a")[0]
    kv.free(first)

    longer = Request("b", list(range(12)) + [99])
    hit = kv.get_computed_blocks(longer)
    assert hit.num_tokens == 12 and list(hit.tables[0]) == blocks

    same = Request("c", list(range(12)))  # a full hit would leave nothing to sample from
    hit = kv.get_computed_blocks(same)
    assert hit.num_tokens == 8 and list(hit.tables[0]) == blocks[:2]
    assert kv.allocate_slots(same, 4, hit) is not None
    assert kv.block_tables("c")[0][:2] == blocks[:2]
    assert kv.pool.ref_count(blocks[0]) == 1
    assert kv.prefix_cache_stats.hit_tokens == 8


def test_no_prefix_hits_without_prefix_caching_or_across_namespaces() -> None:
    kv = manager(caching=False)
    first = Request("a", list(range(12)))
    advance(kv, first, 12)
    kv.free(first)
    assert kv.get_computed_blocks(Request("b", list(range(13)))).num_tokens == 0

    kv = manager()
    first = Request("a", list(range(12)), cache_namespace="user-1")
    advance(kv, first, 12)
    kv.free(first)
    assert kv.get_computed_blocks(Request("b", list(range(13)))).num_tokens == 0
    other = Request("c", list(range(13)), cache_namespace="user-1")
    assert kv.get_computed_blocks(other).num_tokens == 12


def test_a_hit_needs_every_group_to_hold_what_attention_reads() -> None:
    window = 5
    kv = manager(num_blocks=40, groups=[FULL, KVGroupSpec(sliding_window=window)])
    tokens = list(range(24))
    first = Request("a", tokens)
    for _ in range(6):
        advance(kv, first, 4)
    kv.free(first)
    # Allocation order of the free queue: the empty blocks, then the cached ones least recently
    # freed first - the sliding blocks released while `first` ran (positions 0..15).
    pool = kv.pool
    assert kv.prefix_cache is not None
    pool.allocate(pool.num_free - kv.prefix_cache.num_cached_blocks + 4)

    # Resuming at 24 only needs the sliding block of positions 20..23: a full hit.
    hit = kv.get_computed_blocks(Request("b", tokens + [7]))
    assert hit.num_tokens == 24
    assert hit.tables[1][:5] == (NULL_BLOCK,) * 5 and hit.tables[1][5] != NULL_BLOCK
    assert kv.get_computed_blocks(Request("c", tokens[:20] + [7])).num_tokens == 20
    # Resuming at 16 would need positions 12..15 in the sliding layers: evicted, so the hit
    # shrinks until it needs nothing that is gone - here to nothing.
    match = kv.prefix_cache.match("", tokens[:16], 4)
    assert match[0] == list(hit.tables[0][:4]) and match[1] == [NULL_BLOCK] * 4
    assert kv.get_computed_blocks(Request("d", tokens[:16] + [7])).num_tokens == 0
