"""Per-request block tables over one shared block pool, for one or more KV groups.

A KV group is a set of layers that share a block table: Gemma 3 has a full-attention group and a
sliding-window group. Every group gets its own blocks from the one pool, and a block id in a
group's table covers the same ``block_size`` positions in every layer of that group. Table entry
``i`` covers positions ``[i * block_size, (i + 1) * block_size)``, so the runner finds the slot of
position ``p`` at ``table[p // block_size] * block_size + p % block_size`` (in that group's
storage).

Sliding groups: a query at position q reads keys q - window + 1 .. q, so once a request has
computed c tokens, blocks whose positions all lie below c - window + 1 are never read again.
They go back to the pool (staying in the prefix cache while nobody reuses them) and the table
holds NULL_BLOCK there, so a long request keeps about window / block_size + 1 blocks per
sliding group.

Prefix caching with sliding groups stays exact: a hit of P tokens is only used when every group
has what attention will read from before P - full groups every block of the prefix, sliding
groups the blocks covering positions P - window + 1 .. P - 1 - and it shrinks to the longest P
for which that holds. A hit is whole blocks and always leaves at least the last known token to
compute, so there are logits to sample from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ember.core.block_pool import NULL_BLOCK, BlockPool
from ember.core.config import CacheConfig, KVGroupSpec
from ember.core.prefix_cache import CacheNode, PrefixCache, PrefixCacheStats
from ember.core.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class PrefixHit:
    """Cached blocks found for a waiting request (no reference taken yet)."""

    num_tokens: int
    """Leading tokens whose KV the blocks hold (a multiple of block_size)."""
    tables: tuple[tuple[int, ...], ...]
    """Per group, the blocks for those tokens (NULL_BLOCK outside a sliding window)."""


class _RequestBlocks:
    __slots__ = ("tables", "num_released", "num_offered", "cursor")

    def __init__(self, tables: list[list[int]]) -> None:
        self.tables = tables
        self.num_released = [0] * len(tables)
        """Per group, leading table entries already NULL_BLOCK (sliding windows)."""
        self.num_offered = 0
        """Leading full blocks already offered to the prefix cache."""
        self.cursor: CacheNode | None = None


class KVCacheManager:
    def __init__(
        self, config: CacheConfig, groups: Sequence[KVGroupSpec] = (KVGroupSpec(),)
    ) -> None:
        if not groups:
            raise ValueError("kv cache manager: at least one KV group is needed")
        self.block_size = config.block_size
        self.groups = tuple(groups)
        self.pool = BlockPool(config.num_blocks)
        self.prefix_cache: PrefixCache | None = None
        if config.enable_prefix_caching:
            sliding = [group.sliding_window is not None for group in self.groups]
            self.prefix_cache = PrefixCache(self.pool, self.block_size, sliding)
        self._requests: dict[str, _RequestBlocks] = {}
        self._empty_hit = PrefixHit(0, tuple(() for _ in self.groups))

    # -- sizes -----------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def usage(self) -> float:
        """Fraction of the pool held by requests (cached but unreferenced blocks count as free)."""
        return self.pool.usage

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self.prefix_cache.stats if self.prefix_cache else PrefixCacheStats()

    def max_blocks_held(self, num_computed_tokens: int, max_chunk: int) -> int:
        """Most blocks one request holds at once when it computes up to num_computed_tokens
        tokens, at most max_chunk per step."""
        full = cdiv(num_computed_tokens, self.block_size)
        total = 0
        for group in self.groups:
            if group.sliding_window is None:
                total += full
            else:
                # A chunk [c, c + n) reads keys from c - window + 1 and writes up to c + n - 1.
                span = cdiv(group.sliding_window - 1 + max_chunk, self.block_size) + 1
                total += min(full, span)
        return total

    # -- the scheduler's calls -------------------------------------------------------------------

    def get_computed_blocks(self, request: Request) -> PrefixHit:
        """The longest usable cached prefix of a request that holds no blocks yet."""
        cache = self.prefix_cache
        if cache is None or request.request_id in self._requests:
            return self._empty_hit
        # Whole blocks, and never the last token: its logits are needed to sample.
        max_blocks = (request.num_tokens - 1) // self.block_size
        if max_blocks <= 0:
            return self._empty_hit
        tables = cache.match(request.cache_namespace, request.all_token_ids, max_blocks)
        num_blocks = len(tables[0])
        while num_blocks > 0 and not self._usable(tables, num_blocks):
            num_blocks -= 1
        if num_blocks == 0:
            return self._empty_hit
        hit_tokens = num_blocks * self.block_size
        trimmed = []
        for group, table in zip(self.groups, tables, strict=True):
            first = self._first_needed_block(group, hit_tokens)
            trimmed.append((NULL_BLOCK,) * first + tuple(table[first:num_blocks]))
        return PrefixHit(hit_tokens, tuple(trimmed))

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        hit: PrefixHit | None = None,
        num_lookahead_tokens: int = 0,
    ) -> list[list[int]] | None:
        """Make room for num_new_tokens more tokens (and lookahead slots for draft tokens).

        For a request without blocks, `hit` (from get_computed_blocks) becomes the start of its
        tables. Returns the new blocks per group, or None when the pool cannot serve the whole
        request; then nothing was taken.
        """
        state = self._requests.get(request.request_id)
        if state is None:
            hit = hit or self._empty_hit
            num_computed = hit.num_tokens
            tables = [list(table) for table in hit.tables]
            hit_blocks = [block for table in hit.tables for block in table if block != NULL_BLOCK]
        else:
            num_computed = request.num_computed_tokens
            self._release_outside_window(state, num_computed)
            tables = state.tables
            hit_blocks = []
        blocks_needed = cdiv(num_computed + num_new_tokens + num_lookahead_tokens, self.block_size)
        counts = [max(0, blocks_needed - len(table)) for table in tables]
        # Hit blocks nobody references sit in the free queue: taking them uses free blocks too.
        idle_hits = sum(1 for block in hit_blocks if self.pool.ref_count(block) == 0)
        if sum(counts) + idle_hits > self.pool.num_free:
            return None
        if state is None:
            self.pool.touch(hit_blocks)
            state = self._requests[request.request_id] = _RequestBlocks(tables)
            if self.prefix_cache is not None:
                self.prefix_cache.record(request.num_tokens, num_computed)
        new_blocks = []
        for table, count in zip(tables, counts, strict=True):
            blocks = self.pool.allocate(count)
            table.extend(blocks)
            new_blocks.append(blocks)
        return new_blocks

    def cache_blocks(self, request: Request) -> None:
        """Offer the request's newly full, computed blocks to the prefix cache."""
        state = self._requests.get(request.request_id)
        if self.prefix_cache is None or state is None:
            return
        num_full = request.num_computed_tokens // self.block_size
        if num_full > state.num_offered:
            state.cursor = self.prefix_cache.insert(
                request.cache_namespace,
                request.all_token_ids,
                state.tables,
                num_full,
                state.cursor,
            )
            state.num_offered = num_full

    def free(self, request: Request) -> None:
        """Release every block of the request, offering its computed blocks to the cache first."""
        self.cache_blocks(request)
        state = self._requests.pop(request.request_id, None)
        if state is None:
            return
        for table in state.tables:
            # Deepest first: the free queue then evicts a prefix's tail before its head.
            self.pool.free(reversed(table))

    def block_tables(self, request_id: str) -> list[list[int]]:
        """Per group, the request's table (a copy the runner may keep)."""
        return [list(table) for table in self._requests[request_id].tables]

    def has_blocks(self, request_id: str) -> bool:
        return request_id in self._requests

    def reset_prefix_cache(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    # -- sliding windows -------------------------------------------------------------------------

    def _first_needed_block(self, group: KVGroupSpec, num_computed: int) -> int:
        """First table entry a query at position num_computed (or later) can read."""
        if group.sliding_window is None:
            return 0
        return max(0, num_computed - group.sliding_window + 1) // self.block_size

    def _usable(self, tables: list[list[int]], num_blocks: int) -> bool:
        hit_tokens = num_blocks * self.block_size
        for group, table in zip(self.groups, tables, strict=True):
            first = self._first_needed_block(group, hit_tokens)
            if any(block == NULL_BLOCK for block in table[first:num_blocks]):
                return False
        return True

    def _release_outside_window(self, state: _RequestBlocks, num_computed: int) -> None:
        for index, group in enumerate(self.groups):
            if group.sliding_window is None:
                continue
            first = self._first_needed_block(group, num_computed)
            table = state.tables[index]
            start = state.num_released[index]
            if first <= start:
                continue
            released = []
            for position in range(start, first):
                if table[position] != NULL_BLOCK:
                    released.append(table[position])
                    table[position] = NULL_BLOCK
            self.pool.free(released)
            state.num_released[index] = first
