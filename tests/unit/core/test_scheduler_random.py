"""Thousands of random steps on a tiny pool: arrivals, n > 1 siblings, aborts at any moment, stop
strings, preemption and eviction, with every invariant checked after every step and every
request's tokens compared with what the fake model generates for it alone."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from ember.core import (
    CacheConfig,
    FinishReason,
    KVGroupSpec,
    RejectReason,
    Request,
    RequestRejected,
    Scheduler,
    SchedulerConfig,
    StopCriteria,
)

from .fake_runner import FakeRunner, reference_output
from .invariants import check_output, check_state

VOCAB = 30
EOS = 0
FULL = KVGroupSpec(num_layers=2)
SLIDING = KVGroupSpec(num_layers=3, sliding_window=6)


@dataclass(frozen=True)
class Case:
    groups: list[KVGroupSpec]
    policy: str = "fcfs"
    caching: bool = True
    threshold: int = 0
    num_blocks: int | None = None
    """None: 22 or 32, drawn by the seed."""


CASES = {
    "full-fcfs": Case([FULL]),
    "full-priority-capped": Case([FULL], policy="priority", threshold=8),
    "full-no-cache": Case([FULL], caching=False),
    "gemma-like": Case([FULL, SLIDING]),
    "gemma-like-priority": Case([SLIDING, FULL], policy="priority", threshold=8),
    "sliding-only": Case([SLIDING], num_blocks=10),
}


def _random_stop(rng: random.Random) -> StopCriteria:
    max_tokens = rng.choice([None, rng.randint(1, 24)])
    min_tokens = rng.choice([0, 0, 3])
    if max_tokens is not None:
        min_tokens = min(min_tokens, max_tokens)
    return StopCriteria(
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        eos_token_ids=frozenset({EOS}),
        stop_token_ids=rng.choice([frozenset(), frozenset({7})]),
        ignore_eos=rng.random() < 0.2,
    )


def _run(case: str, seed: int, num_requests: int = 100) -> dict[str, int]:
    spec = CASES[case]
    rng = random.Random(seed)
    scheduler = Scheduler(
        SchedulerConfig(
            max_num_batched_tokens=20,
            max_num_seqs=6,
            max_model_len=48,
            max_waiting=12,
            long_prefill_token_threshold=spec.threshold,
            policy=spec.policy,
        ),
        CacheConfig(
            block_size=4,
            num_blocks=spec.num_blocks or rng.choice([22, 32]),
            enable_prefix_caching=spec.caching,
        ),
        spec.groups,
    )
    runner = FakeRunner(scheduler, vocab=VOCAB)
    prefixes = [[rng.randrange(1, VOCAB) for _ in range(rng.randint(4, 20))] for _ in range(3)]
    requests: dict[str, Request] = {}
    streamed: dict[str, list[int]] = {}
    ended_by: dict[str, FinishReason] = {}
    ended_outside: set[str] = set()
    counts = {"rejected": 0, "aborted": 0, "steps": 0}
    added = 0

    def abort_one() -> None:
        if scheduler.requests:
            victim = rng.choice(sorted(scheduler.requests))
            reason = rng.choice([FinishReason.ABORT, FinishReason.STOP])
            assert scheduler.finish_requests([victim], reason) == [victim]
            ended_outside.add(victim)
            counts["aborted"] += 1

    for step in range(5000):
        while added < num_requests and rng.random() < 0.25:
            prompt = rng.choice(prefixes)[: rng.randint(0, 20)]
            prompt += [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 12))]
            if rng.random() < 0.05:
                prompt = prompt * 4  # sometimes too long for max_model_len
            stop = _random_stop(rng)
            namespace = rng.choice(["", "", "lora-a"])
            copies = rng.choice([2, 3]) if rng.random() < 0.15 else 1
            for copy in range(copies):
                request = Request(
                    f"r{added}-{copy}",
                    prompt,
                    stop,
                    priority=rng.randint(0, 3),
                    cache_namespace=namespace,
                    sibling_group=f"r{added}" if copies > 1 else None,
                )
                try:
                    scheduler.add_request(request)
                except RequestRejected as error:
                    assert error.reason in (RejectReason.TOO_LONG, RejectReason.QUEUE_FULL)
                    counts["rejected"] += 1
                    continue
                requests[request.request_id] = request
                streamed[request.request_id] = []
            added += 1
        if rng.random() < 0.04:
            abort_one()

        output = scheduler.schedule()
        check_output(scheduler, output)
        check_state(scheduler)
        sampled = runner.execute(output)
        if rng.random() < 0.02:
            abort_one()  # between schedule() and update_from_output()
        for update in scheduler.update_from_output(output, sampled):
            assert update.finish_reason is not FinishReason.ERROR, update.error
            streamed[update.request_id] += update.new_token_ids
            if update.finish_reason is not None:
                ended_by[update.request_id] = update.finish_reason
        check_state(scheduler)
        counts["steps"] = step + 1
        if added >= num_requests and not scheduler.has_unfinished_requests():
            break
    else:
        pytest.fail(f"requests still unfinished after 5000 steps: {scheduler.requests}")

    pool = scheduler.kv.pool
    assert pool.num_free == pool.capacity == pool.num_blocks - 1
    assert all(pool.ref_count(block) == 0 for block in range(pool.num_blocks))
    for request_id, request in requests.items():
        assert request.is_finished
        assert streamed[request_id] == request.output_token_ids
        expected = reference_output(
            request.prompt_token_ids,
            request.stop,
            request.cache_namespace,
            scheduler.config.max_model_len,
            VOCAB,
        )
        if request_id in ended_outside:
            assert request.output_token_ids == expected[: request.num_output_tokens]
        else:
            assert ended_by[request_id] is request.finish_reason
            assert request.output_token_ids == expected, request_id
    counts["preemptions"] = scheduler.num_preemptions
    counts["hit_tokens"] = scheduler.kv.prefix_cache_stats.hit_tokens
    counts["reads"] = runner.num_reads
    return counts


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [1, 2])
def test_random_traffic_keeps_every_invariant(case: str, seed: int) -> None:
    counts = _run(case, seed)
    assert counts["steps"] > 50
    assert counts["reads"] > 0


def test_random_traffic_exercises_preemption_eviction_and_hits() -> None:
    totals = {"preemptions": 0, "hit_tokens": 0, "rejected": 0, "aborted": 0}
    for seed in range(3, 6):
        counts = _run("gemma-like", seed, num_requests=60)
        for key in totals:
            totals[key] += counts[key]
    assert totals["preemptions"] > 0
    assert totals["hit_tokens"] > 0
    assert totals["aborted"] > 0
