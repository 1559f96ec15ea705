"""A fixed pool of KV blocks: reference counts and one free queue.

Blocks are plain ints ``0 .. num_blocks - 1``. Block 0 is the null block: it is never handed out,
and block tables use it for positions that hold nothing (sliding-window holes), so the runner
always has a valid index to gather from.

A block is *free* when no request references it (ref count 0). A free block may still hold
cached content (the prefix cache marked it); such blocks are the eviction candidates. The free
queue is ordered so that allocation takes, in this order:

1. blocks holding nothing (pushed to the front when freed), then
2. cached blocks, least recently freed first (appended at the back when freed).

When allocation takes a cached block, the pool tells the prefix cache to forget it before
handing it out. A cache hit on a free cached block takes it out of the middle of the queue, so
the queue is a doubly linked list over arrays (O(1) removal anywhere, no per-call objects).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

NULL_BLOCK = 0
"""Block id that stands for "no block": never allocated, never freed, never counted."""


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"block pool: num_blocks must be >= 2, got {num_blocks}")
        self.num_blocks = num_blocks
        self._ref = [0] * num_blocks
        self._cached = [False] * num_blocks
        self._on_evict: Callable[[int], None] | None = None
        # The queue links blocks through two arrays; index num_blocks is the head sentinel and
        # num_blocks + 1 the tail sentinel, so insertion and removal never special-case the ends.
        self._head = num_blocks
        self._tail = num_blocks + 1
        self._next = [0] * (num_blocks + 2)
        self._prev = [0] * (num_blocks + 2)
        self._next[self._head] = self._tail
        self._prev[self._tail] = self._head
        self._num_free = 0
        for block in range(1, num_blocks):
            self._link_before(self._tail, block)

    # -- queries -------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Blocks that can ever be handed out (all but the null block)."""
        return self.num_blocks - 1

    @property
    def num_free(self) -> int:
        """Blocks no request references: empty ones plus evictable cached ones."""
        return self._num_free

    @property
    def usage(self) -> float:
        """Fraction of the pool referenced by requests."""
        return 1.0 - self._num_free / self.capacity

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def is_cached(self, block: int) -> bool:
        return self._cached[block]

    def free_queue(self) -> list[int]:
        """The free blocks in allocation order (for tests and debugging)."""
        order = []
        block = self._next[self._head]
        while block != self._tail:
            order.append(block)
            block = self._next[block]
        return order

    # -- the prefix cache's hooks ----------------------------------------------------------------

    def set_evictor(self, on_evict: Callable[[int], None]) -> None:
        """Called with a cached block just before allocation reuses it."""
        self._on_evict = on_evict

    def mark_cached(self, block: int) -> None:
        self._cached[block] = True

    def mark_uncached(self, block: int) -> None:
        """The block's content is no longer reachable: if free, it moves to the front."""
        if not self._cached[block]:
            return
        self._cached[block] = False
        if self._ref[block] == 0:
            self._unlink(block)
            self._link_before(self._next[self._head], block)

    # -- allocation ------------------------------------------------------------------------------

    def allocate(self, count: int) -> list[int]:
        """Take `count` free blocks (ref count 1 each). The caller checks num_free first."""
        if count > self._num_free:
            raise RuntimeError(f"block pool: asked for {count} blocks, {self._num_free} free")
        blocks = []
        for _ in range(count):
            block = self._next[self._head]
            self._unlink(block)
            if self._cached[block]:
                self._cached[block] = False
                # May uncache more blocks (a removed subtree): they move to the queue's front.
                if self._on_evict is not None:
                    self._on_evict(block)
            self._ref[block] = 1
            blocks.append(block)
        return blocks

    def touch(self, blocks: Iterable[int]) -> None:
        """Take one more reference on each block (a prefix-cache hit); free ones leave the queue."""
        for block in blocks:
            if block == NULL_BLOCK:
                continue
            if self._ref[block] == 0:
                self._unlink(block)
            self._ref[block] += 1

    def free(self, blocks: Iterable[int]) -> None:
        """Drop one reference on each block. Of the cached ones, those listed first are evicted
        first; empty ones are reused before any cached one."""
        for block in blocks:
            if block == NULL_BLOCK:
                continue
            ref = self._ref[block]
            if ref <= 0:
                raise RuntimeError(f"block pool: block {block} freed more often than taken")
            self._ref[block] = ref - 1
            if ref == 1:
                if self._cached[block]:
                    self._link_before(self._tail, block)
                else:
                    self._link_before(self._next[self._head], block)

    # -- linked list -----------------------------------------------------------------------------

    def _link_before(self, successor: int, block: int) -> None:
        predecessor = self._prev[successor]
        self._next[predecessor] = block
        self._prev[block] = predecessor
        self._next[block] = successor
        self._prev[successor] = block
        self._num_free += 1

    def _unlink(self, block: int) -> None:
        predecessor, successor = self._prev[block], self._next[block]
        self._next[predecessor] = successor
        self._prev[successor] = predecessor
        self._num_free -= 1
