"""A stand-in for the model runner that checks the paging end to end.

Instead of K and V it writes a fingerprint of each position's prefix (namespace + every token up
to that position) into the slot the block table names, and before "attending" it checks that every
key the chunk's queries would read holds the right fingerprint. The "model" samples a token from
the last position's fingerprint, so a request's output depends only on its own prompt: whatever
the batching, chunking, caching or preemption, it must come out the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ember.core import (
    NULL_BLOCK,
    Request,
    RequestUpdate,
    Scheduler,
    SchedulerOutput,
    StopCriteria,
)
from ember.core.request import check_stop


def next_token(fingerprint: int, vocab: int) -> int:
    return hash((fingerprint, "next")) % vocab


class Fingerprints:
    """fp[p] = hash of (namespace, tokens[0..p]), extended as the sequence grows."""

    def __init__(self, namespace: str) -> None:
        self.values: list[int] = []
        self.seed = hash(("ns", namespace))

    def upto(self, tokens: Sequence[int], count: int) -> list[int]:
        while len(self.values) < count:
            previous = self.values[-1] if self.values else self.seed
            self.values.append(hash((previous, tokens[len(self.values)])))
        return self.values


def reference_output(
    prompt: Sequence[int], stop: StopCriteria, namespace: str, max_model_len: int, vocab: int
) -> list[int]:
    """What the fake model generates for a request run alone, token by token."""
    request = Request("reference", prompt, stop, cache_namespace=namespace)
    fingerprints = Fingerprints(namespace)
    while True:
        fps = fingerprints.upto(request.all_token_ids, request.num_tokens)
        request.append_output((next_token(fps[-1], vocab),))
        if check_stop(request, max_model_len) is not None:
            return request.output_token_ids


class FakeRunner:
    def __init__(self, scheduler: Scheduler, vocab: int = 50) -> None:
        self.scheduler = scheduler
        self.vocab = vocab
        self.block_size = scheduler.kv.block_size
        self.windows = [group.sliding_window for group in scheduler.kv.groups]
        self.slots: dict[int, list[tuple[int, int] | None]] = {}
        self.fingerprints: dict[str, Fingerprints] = {}
        self.num_reads = 0

    def execute(self, output: SchedulerOutput) -> dict[str, list[int]]:
        for request_id in [*output.finished_ids, *output.preempted_ids]:
            self.fingerprints.pop(request_id, None)
        pool = self.scheduler.kv.pool
        size = self.block_size
        sampled = {}
        for item in output.requests:
            request = self.scheduler.requests[item.request_id]
            start, end = item.start_position, item.start_position + item.num_tokens
            assert item.token_ids == request.all_token_ids[start:end]
            state = self.fingerprints.setdefault(
                item.request_id, Fingerprints(request.cache_namespace)
            )
            fps = state.upto(request.all_token_ids, end)
            for group, table in enumerate(item.block_tables):
                assert len(table) >= -(-end // size), "block table too short for the chunk"
                for position in range(start, end):
                    block = table[position // size]
                    assert block != NULL_BLOCK, f"write to the null block at {position}"
                    # Shared or cached blocks are immutable: only a request's own fresh blocks
                    # may be written.
                    assert pool.ref_count(block) == 1, f"write to shared block {block}"
                    assert not pool.is_cached(block), f"write to cached block {block}"
                    slots = self.slots.setdefault(block, [None] * size)
                    slots[position % size] = (group, fps[position])
            for group, table in enumerate(item.block_tables):
                window = self.windows[group]
                first_key = 0 if window is None else max(0, start - window + 1)
                for position in range(first_key, end):
                    block = table[position // size]
                    assert block != NULL_BLOCK, f"key {position} missing in group {group}"
                    found = self.slots.get(block, [None] * size)[position % size]
                    assert found == (group, fps[position]), (
                        f"{item.request_id}: wrong KV at position {position}, group {group}"
                    )
                    self.num_reads += 1
            if item.needs_logits:
                sampled[item.request_id] = [next_token(fps[end - 1], self.vocab)]
        return sampled


class Runner(Protocol):
    def execute(self, output: SchedulerOutput) -> dict[str, list[int]]: ...


class ScriptedRunner:
    """Samples each request's next token from a fixed script (for stop-condition tests)."""

    def __init__(self, scripts: dict[str, list[int]]) -> None:
        self.scripts = {request_id: iter(tokens) for request_id, tokens in scripts.items()}

    def execute(self, output: SchedulerOutput) -> dict[str, list[int]]:
        return {
            item.request_id: [next(self.scripts[item.request_id])]
            for item in output.requests
            if item.needs_logits
        }


def step(scheduler: Scheduler, runner: Runner) -> tuple[SchedulerOutput, list[RequestUpdate]]:
    """One engine step with the invariants checked around it."""
    from .invariants import check_output, check_state

    output = scheduler.schedule()
    check_output(scheduler, output)
    check_state(scheduler)
    updates = scheduler.update_from_output(output, runner.execute(output))
    check_state(scheduler)
    return output, updates


def run_all(scheduler: Scheduler, runner: Runner, max_steps: int = 1000) -> dict[str, list[int]]:
    """Step until every request ended; returns the tokens streamed per request."""
    streamed: dict[str, list[int]] = {}
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            return streamed
        _, updates = step(scheduler, runner)
        for update in updates:
            streamed.setdefault(update.request_id, []).extend(update.new_token_ids)
    raise AssertionError(f"still unfinished after {max_steps} steps: {scheduler.requests}")
