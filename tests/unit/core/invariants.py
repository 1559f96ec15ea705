"""Consistency checks over the whole core state, run after every step by the scheduler tests."""

from __future__ import annotations

from collections import Counter

from ember.core import NULL_BLOCK, RequestStatus, Scheduler, SchedulerOutput
from ember.core.prefix_cache import CacheNode


def check_output(scheduler: Scheduler, output: SchedulerOutput) -> None:
    config = scheduler.config
    assert output.num_scheduled_tokens <= config.max_num_batched_tokens
    assert len(output.requests) <= config.max_num_seqs
    assert len(scheduler.running) <= config.max_num_seqs
    ids = [item.request_id for item in output.requests]
    assert len(ids) == len(set(ids))
    for item in output.requests:
        assert 0 < item.num_tokens <= config.max_chunk
        assert scheduler.requests[item.request_id].status is RequestStatus.RUNNING
    assert not set(ids) & set(output.preempted_ids)


def check_state(scheduler: Scheduler) -> None:
    kv = scheduler.kv
    pool = kv.pool
    running = list(scheduler.running)
    waiting = list(scheduler.waiting)
    assert {r.request_id for r in running + waiting} == set(scheduler.requests)
    assert len(running) + len(waiting) == len(scheduler.requests)
    for request in running:
        assert request.status is RequestStatus.RUNNING
        assert kv.has_blocks(request.request_id)
    for request in waiting:
        assert request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        assert request.num_computed_tokens == 0
        assert not kv.has_blocks(request.request_id)

    # Every reference is a table entry, and only cached blocks are shared between tables.
    references: Counter[int] = Counter()
    for request in running:
        tables = kv.block_tables(request.request_id)
        for group, table in zip(kv.groups, tables, strict=True):
            assert len(table) * kv.block_size >= request.num_computed_tokens
            live = [block for block in table if block != NULL_BLOCK]
            assert len(live) == len(set(live))
            references.update(live)
            if group.sliding_window is None:
                assert NULL_BLOCK not in table
    for block in range(1, pool.num_blocks):
        assert pool.ref_count(block) == references[block], f"block {block}"
        if references[block] > 1:
            assert pool.is_cached(block), f"block {block} shared but not cached"
    assert pool.ref_count(NULL_BLOCK) == 0

    # The free queue holds exactly the unreferenced blocks: empty ones first, then cached ones.
    queue = pool.free_queue()
    assert len(queue) == len(set(queue)) == pool.num_free
    assert set(queue) == {b for b in range(1, pool.num_blocks) if pool.ref_count(b) == 0}
    cached_flags = [pool.is_cached(block) for block in queue]
    assert cached_flags == sorted(cached_flags), "an empty block queued behind a cached one"

    cache = kv.prefix_cache
    if cache is None:
        assert not any(pool.is_cached(b) for b in range(pool.num_blocks))
        return
    # The tree and the pool agree on which blocks are cached and where.
    seen: set[int] = set()
    for root in cache._roots.values():
        stack: list[CacheNode] = [root]
        while stack:
            node = stack.pop()
            assert node.alive
            for index, block in enumerate(node.blocks):
                if block != NULL_BLOCK:
                    assert cache._owner[block] == (node, index)
                    seen.add(block)
            if node.parent is not None:
                assert node.parent.children[node.key] is node
                assert node.depth == node.parent.depth + 1
                assert len(node.key) == kv.block_size
                assert node.children or any(b != NULL_BLOCK for b in node.blocks)
                for entry, spec in zip(node.blocks, kv.groups, strict=True):
                    if spec.sliding_window is None:
                        assert entry != NULL_BLOCK, "full group entry missing"
            stack.extend(node.children.values())
    assert seen == set(cache._owner)
    assert seen == {b for b in range(pool.num_blocks) if pool.is_cached(b)}
