from __future__ import annotations

from ember.core import NULL_BLOCK, BlockPool, PrefixCache

SIZE = 4


def make(num_blocks: int = 16, sliding: tuple[bool, ...] = (False,)) -> PrefixCache:
    return PrefixCache(BlockPool(num_blocks), SIZE, sliding)


def compute(cache: PrefixCache, tokens: list[int], namespace: str = "") -> list[int]:
    """A request that computed `tokens` in fresh blocks and offered its full ones."""
    blocks = cache.pool.allocate(-(-len(tokens) // SIZE))
    cache.insert(namespace, tokens, [blocks], len(tokens) // SIZE)
    return blocks


def seq(*values: int, length: int = SIZE) -> list[int]:
    """Blocks of tokens: seq(1, 2) is [1, 1, 1, 1, 2, 2, 2, 2]."""
    return [value for value in values for _ in range(length)]


def test_match_returns_the_longest_cached_full_block_prefix() -> None:
    cache = make()
    assert cache.match("", seq(1, 2), 10) == [[]]
    blocks = compute(cache, seq(1, 2, 3) + [4, 4])  # the partial block is not cached
    assert cache.num_cached_blocks == 3
    assert cache.match("", seq(1, 2, 3, 4), 10) == [blocks[:3]]
    assert cache.match("", seq(1, 2, 5), 10) == [blocks[:2]]
    assert cache.match("", seq(1, 2, 3), 2) == [blocks[:2]]  # max_blocks
    assert cache.match("", seq(1, 2) + [3, 3], 10) == [blocks[:2]]  # only full blocks
    assert cache.match("", seq(9), 10) == [[]]


def test_prefixes_that_diverge_inside_a_block_share_only_the_blocks_before() -> None:
    cache = make()
    first = compute(cache, seq(1, 2))
    second_tokens = seq(1) + [2, 2, 2, 7]
    assert cache.match("", second_tokens, 10) == [first[:1]]
    second = compute(cache, second_tokens)
    # No edge is ever split: both second blocks hang under the shared first one.
    assert cache.match("", seq(1, 2), 10) == [first]
    assert cache.match("", second_tokens, 10) == [[first[0], second[1]]]
    assert not cache.pool.is_cached(second[0])  # a duplicate of a cached block stays private


def test_namespaces_never_share_blocks() -> None:
    cache = make()
    plain = compute(cache, seq(1, 2))
    assert cache.match("lora-a", seq(1, 2), 10) == [[]]
    salted = compute(cache, seq(1, 2), namespace="lora-a")
    assert cache.match("lora-a", seq(1, 2), 10) == [salted]
    assert cache.match("", seq(1, 2), 10) == [plain]
    assert set(plain).isdisjoint(salted)


def test_eviction_takes_the_least_recently_freed_deepest_blocks_first() -> None:
    cache = make(num_blocks=7)  # 6 usable
    old = compute(cache, seq(1, 2, 3))
    new = compute(cache, seq(5, 6, 7))
    cache.pool.free(reversed(old))
    cache.pool.free(reversed(new))
    cache.pool.allocate(1)
    assert cache.match("", seq(1, 2, 3), 10) == [old[:2]]
    cache.pool.allocate(2)
    assert cache.match("", seq(1, 2, 3), 10) == [[]]
    assert cache.match("", seq(5, 6, 7), 10) == [new]
    assert cache.num_cached_blocks == 3


def test_referenced_blocks_are_never_evicted() -> None:
    cache = make(num_blocks=6)  # 5 usable
    first = compute(cache, seq(1, 2, 3))
    hit = cache.match("", seq(1, 2, 9), 10)[0]
    cache.pool.touch(hit)  # a second request shares the first two blocks
    cache.pool.free(reversed(first))
    taken = cache.pool.allocate(cache.pool.num_free)  # everything evictable
    assert first[2] in taken and not set(hit) & set(taken)
    assert cache.match("", seq(1, 2, 3), 10) == [first[:2]]


def test_evicting_a_parent_drops_its_subtree() -> None:
    cache = make(num_blocks=4)  # 3 usable
    a, b = compute(cache, seq(1, 2))
    # A request holding the child but not the parent (the duplicate case): free only a.
    cache.pool.free([a])
    assert a in cache.pool.allocate(2)  # the empty block first, then a is evicted
    assert cache.match("", seq(1, 2), 10) == [[]]
    assert not cache.pool.is_cached(b) and cache.num_cached_blocks == 0
    cache.pool.free([b])
    assert cache.pool.free_queue()[0] == b  # plain again: reused first


def test_sliding_group_entries_can_go_missing_without_dropping_the_node() -> None:
    cache = make(num_blocks=12, sliding=(False, True))
    pool = cache.pool
    full, window = pool.allocate(2), pool.allocate(2)
    cache.insert("", seq(1, 2), [full, window], 2)
    pool.free([window[0]])  # released once outside the window
    assert pool.allocate(pool.num_free)[-1] == window[0]  # the empty blocks go first
    assert not pool.is_cached(window[0])
    assert cache.match("", seq(1, 2), 10) == [full, [NULL_BLOCK, window[1]]]
    # A later request recomputed that block (into the reused id) and fills the hole.
    again = window[0]
    cache.insert("", seq(1, 2), [full, [again, window[1]]], 2)
    assert cache.match("", seq(1, 2), 10) == [full, [again, window[1]]]


def test_insert_resumes_from_its_cursor_and_rewalks_when_it_died() -> None:
    cache = make()
    blocks = cache.pool.allocate(3)
    tokens = seq(1, 2, 3)
    cursor = cache.insert("", tokens, [blocks], 1)
    assert cursor is not None and cursor.depth == 1
    cursor = cache.insert("", tokens, [blocks], 2, cursor)
    assert cursor is not None and cursor.depth == 2
    cache.clear()
    assert not cursor.alive and cache.num_cached_blocks == 0
    cursor = cache.insert("", tokens, [blocks], 3, cursor)
    assert cache.match("", tokens, 10) == [blocks]


def test_clear_forgets_everything_and_frees_blocks_become_plain() -> None:
    cache = make(num_blocks=5)
    blocks = compute(cache, seq(1, 2))
    cache.pool.free(blocks)
    cache.clear()
    assert cache.match("", seq(1, 2), 10) == [[]]
    assert not any(cache.pool.is_cached(block) for block in blocks)


def test_hit_statistics() -> None:
    cache = make()
    assert cache.stats.hit_rate == 0.0
    cache.record(query_tokens=20, hit_tokens=16)
    cache.record(query_tokens=12, hit_tokens=0)
    assert (cache.stats.queries, cache.stats.query_tokens, cache.stats.hit_tokens) == (2, 32, 16)
    assert cache.stats.hit_rate == 0.5
