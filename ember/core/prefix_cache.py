"""Prefix cache: a radix tree over full token blocks (SGLang's RadixAttention, block-granular).

Each node stands for one full block of ``block_size`` tokens; its key is that block's token ids
and its path from the root is the whole prefix, so a node's KV content is determined by its
path. Because keys are whole blocks, a match or an insert never splits an edge. Every namespace
(LoRA adapter, user cache salt) has its own root, so different namespaces never share blocks.

A node holds one block id per KV group (full-attention and sliding-window layers keep separate
blocks for the same tokens). A sliding group's entry may be missing (NULL_BLOCK): the block was
released once outside the window and later evicted; the node stays for the groups that still
have theirs. A full group's entry is never missing: when a full group's block is evicted, the
node and its whole subtree leave the tree, since nothing below it can be matched without it.

Ownership and eviction: the tree never holds references. Requests hold them (BlockPool ref
counts); a cached block whose last reference is dropped waits in the pool's free queue, least
recently freed first, and the pool calls back here when it reuses one. A request frees its blocks
deepest first, so the queue meets leaves before their parents and the subtree removal above only
happens for the rare duplicate (two requests computed the same block before either was cached).
A referenced block is never in the free queue, so it is never evicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ember.core.block_pool import NULL_BLOCK, BlockPool


class CacheNode:
    """One full block of tokens in the tree; callers only keep it as an insertion cursor."""

    __slots__ = ("namespace", "key", "parent", "children", "blocks", "depth", "alive")

    def __init__(
        self,
        namespace: str,
        key: tuple[int, ...],
        parent: CacheNode | None,
        num_groups: int,
        depth: int,
    ) -> None:
        self.namespace = namespace
        self.key = key
        self.parent = parent
        self.children: dict[tuple[int, ...], CacheNode] = {}
        self.blocks = [NULL_BLOCK] * num_groups
        self.depth = depth
        """Blocks from the root to this node, this one included (0 for a root)."""
        self.alive = True


@dataclass
class PrefixCacheStats:
    queries: int = 0
    """Admissions that looked for a cached prefix."""
    query_tokens: int = 0
    """Tokens those requests had when they looked."""
    hit_tokens: int = 0
    """Tokens served from the cache."""

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


class PrefixCache:
    def __init__(
        self, pool: BlockPool, block_size: int, sliding: Sequence[bool] = (False,)
    ) -> None:
        """`sliding[g]` tells whether KV group g is a sliding-window group."""
        self.pool = pool
        self.block_size = block_size
        self._sliding = tuple(sliding)
        self._roots: dict[str, CacheNode] = {}
        self._owner: dict[int, tuple[CacheNode, int]] = {}
        self.stats = PrefixCacheStats()
        pool.set_evictor(self._evict)

    @property
    def num_groups(self) -> int:
        return len(self._sliding)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._owner)

    def match(self, namespace: str, token_ids: Sequence[int], max_blocks: int) -> list[list[int]]:
        """Per group, the cached blocks of the longest cached prefix of at most max_blocks blocks.

        Entries are NULL_BLOCK where a sliding group's block is gone; the caller decides how much
        of the prefix is usable. No reference is taken.
        """
        tables: list[list[int]] = [[] for _ in self._sliding]
        node = self._roots.get(namespace)
        if node is None:
            return tables
        size = self.block_size
        for index in range(min(max_blocks, len(token_ids) // size)):
            child = node.children.get(tuple(token_ids[index * size : (index + 1) * size]))
            if child is None:
                break
            for table, block in zip(tables, child.blocks, strict=True):
                table.append(block)
            node = child
        return tables

    def insert(
        self,
        namespace: str,
        token_ids: Sequence[int],
        tables: Sequence[Sequence[int]],
        num_blocks: int,
        cursor: CacheNode | None = None,
    ) -> CacheNode | None:
        """Offer the first num_blocks full blocks of a sequence (tables: per group block ids).

        Blocks whose content is already cached under another id stay private to their request.
        `cursor` is what the previous call for the same sequence returned: the walk resumes
        there when it is still in the tree. Returns the cursor for the next call.
        """
        if num_blocks <= 0:
            return cursor
        if cursor is not None and cursor.alive and cursor.depth <= num_blocks:
            node, start = cursor, cursor.depth
        else:
            root = self._roots.get(namespace)
            if root is None:
                root = self._roots[namespace] = CacheNode(namespace, (), None, self.num_groups, 0)
            node, start = root, 0
        size = self.block_size
        for index in range(start, num_blocks):
            key = tuple(token_ids[index * size : (index + 1) * size])
            child = node.children.get(key)
            if child is None:
                child = CacheNode(namespace, key, node, self.num_groups, index + 1)
                node.children[key] = child
            for group, table in enumerate(tables):
                block = table[index]
                if (
                    block != NULL_BLOCK
                    and child.blocks[group] == NULL_BLOCK
                    and not self.pool.is_cached(block)
                ):
                    child.blocks[group] = block
                    self._owner[block] = (child, group)
                    self.pool.mark_cached(block)
            node = child
        self._prune(node)  # only matters when every entry on the path was NULL_BLOCK
        return node

    def record(self, query_tokens: int, hit_tokens: int) -> None:
        """Count one admission's lookup (called once the hit is actually used)."""
        self.stats.queries += 1
        self.stats.query_tokens += query_tokens
        self.stats.hit_tokens += hit_tokens

    def clear(self) -> None:
        """Forget every cached block (new weights or adapters); referenced blocks stay valid."""
        for root in list(self._roots.values()):
            self._detach(root)
        self._roots.clear()

    # -- eviction --------------------------------------------------------------------------------

    def _evict(self, block: int) -> None:
        node, group = self._owner.pop(block)
        node.blocks[group] = NULL_BLOCK
        if self._sliding[group]:
            self._prune(node)
        else:
            parent = node.parent
            assert parent is not None
            del parent.children[node.key]
            self._detach(node)
            self._prune(parent)

    def _detach(self, top: CacheNode) -> None:
        """Drop a subtree that is already unlinked from its parent; its blocks become plain."""
        stack = [top]
        while stack:
            node = stack.pop()
            node.alive = False
            for block in node.blocks:
                if block != NULL_BLOCK:
                    del self._owner[block]
                    self.pool.mark_uncached(block)
            stack.extend(node.children.values())

    def _prune(self, node: CacheNode) -> None:
        """Remove nodes that hold no block and lead nowhere, walking up."""
        while node.alive and not node.children and all(b == NULL_BLOCK for b in node.blocks):
            node.alive = False
            parent = node.parent
            if parent is None:
                del self._roots[node.namespace]
                return
            del parent.children[node.key]
            node = parent
