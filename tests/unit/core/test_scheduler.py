"""Batching behaviour: the token budget, chunked prefill, prefix hits, siblings, policies."""

from __future__ import annotations

from ember.core import (
    CacheConfig,
    Request,
    RequestStatus,
    Scheduler,
    SchedulerConfig,
    StopCriteria,
)

from .fake_runner import FakeRunner, reference_output, run_all, step

VOCAB = 50
SIZE = 4


def make(
    budget: int = 16,
    max_num_seqs: int = 8,
    max_model_len: int = 64,
    num_blocks: int = 64,
    caching: bool = True,
    **scheduler_options: object,
) -> tuple[Scheduler, FakeRunner]:
    scheduler = Scheduler(
        SchedulerConfig(
            max_num_batched_tokens=budget,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            **scheduler_options,  # type: ignore[arg-type]
        ),
        CacheConfig(block_size=SIZE, num_blocks=num_blocks, enable_prefix_caching=caching),
    )
    return scheduler, FakeRunner(scheduler, vocab=VOCAB)


def request(request_id: str, prompt: list[int], max_tokens: int = 4, **options: object) -> Request:
    return Request(request_id, prompt, StopCriteria(max_tokens=max_tokens), **options)  # type: ignore[arg-type]


def expected(scheduler: Scheduler, item: Request) -> list[int]:
    return reference_output(
        item.prompt_token_ids,
        item.stop,
        item.cache_namespace,
        scheduler.config.max_model_len,
        VOCAB,
    )


def prompt(length: int, start: int = 1) -> list[int]:
    return [(start + i) % VOCAB for i in range(length)]


def test_a_request_prefills_then_decodes_one_token_per_step() -> None:
    scheduler, runner = make()
    a = request("a", prompt(10), max_tokens=3)
    scheduler.add_request(a)
    output, updates = step(scheduler, runner)
    (item,) = output.requests
    assert (item.request_id, item.start_position, item.token_ids) == ("a", 0, prompt(10))
    assert item.needs_logits and len(item.block_tables) == 1 and len(item.block_tables[0]) == 3
    assert len(updates[0].new_token_ids) == 1 and not updates[0].finished

    output, updates = step(scheduler, runner)
    (item,) = output.requests
    assert (item.start_position, item.token_ids) == (10, a.output_token_ids[:1])
    step(scheduler, runner)
    assert a.status is RequestStatus.FINISHED_LENGTH
    assert a.output_token_ids == expected(scheduler, a)
    assert scheduler.kv.num_free_blocks == scheduler.kv.pool.capacity
    assert scheduler.schedule().finished_ids == ["a"]


def test_the_token_budget_and_max_num_seqs_bound_every_step() -> None:
    scheduler, runner = make(budget=16, max_num_seqs=3)
    requests = [request(f"r{i}", prompt(6, start=10 * i)) for i in range(6)]
    for item in requests:
        scheduler.add_request(item)
    output, _ = step(scheduler, runner)
    assert [(i.request_id, i.num_tokens, i.needs_logits) for i in output.requests] == [
        ("r0", 6, True),
        ("r1", 6, True),
        ("r2", 4, False),  # the rest of the budget: a chunk
    ]
    assert len(scheduler.running) == 3 and len(scheduler.waiting) == 3
    run_all(scheduler, runner)  # step() checks budget and max_num_seqs every step
    for item in requests:
        assert item.output_token_ids == expected(scheduler, item)


def test_a_long_prompt_is_prefilled_in_chunks_alongside_decodes() -> None:
    scheduler, runner = make(budget=16)
    short = [request(name, prompt(3, start=s), max_tokens=20) for name, s in (("a", 1), ("b", 7))]
    for item in short:
        scheduler.add_request(item)
    step(scheduler, runner)
    long = request("long", prompt(40, start=20))
    scheduler.add_request(long)
    chunks = []
    for _ in range(3):
        output, _ = step(scheduler, runner)
        by_id = {item.request_id: item for item in output.requests}
        assert by_id["a"].num_tokens == by_id["b"].num_tokens == 1
        chunk = by_id["long"]
        chunks.append((chunk.start_position, chunk.num_tokens, chunk.needs_logits))
    assert chunks == [(0, 14, False), (14, 14, False), (28, 12, True)]
    assert long.num_output_tokens == 1
    run_all(scheduler, runner)
    for item in [*short, long]:
        assert item.output_token_ids == expected(scheduler, item)


def test_long_prefill_threshold_caps_each_chunk() -> None:
    scheduler, runner = make(budget=16, long_prefill_token_threshold=5)
    scheduler.add_request(request("a", prompt(12)))
    scheduler.add_request(request("b", prompt(7, start=30)))
    output, _ = step(scheduler, runner)
    assert [(i.request_id, i.num_tokens) for i in output.requests] == [("a", 5), ("b", 5)]
    output, _ = step(scheduler, runner)
    assert [(i.request_id, i.num_tokens) for i in output.requests] == [("a", 5), ("b", 2)]


def test_without_chunked_prefill_a_prompt_waits_for_a_step_with_room() -> None:
    scheduler, runner = make(budget=64, enable_chunked_prefill=False)
    scheduler.add_request(request("a", prompt(60)))
    scheduler.add_request(request("b", prompt(10, start=5)))
    output, _ = step(scheduler, runner)
    assert [(i.request_id, i.num_tokens) for i in output.requests] == [("a", 60)]
    output, _ = step(scheduler, runner)
    assert [(i.request_id, i.num_tokens) for i in output.requests] == [("a", 1), ("b", 10)]


def test_a_prefix_hit_reduces_work_and_sets_num_cached_tokens() -> None:
    scheduler, runner = make()
    shared = prompt(20)
    first = request("first", shared, max_tokens=2)
    scheduler.add_request(first)
    run_all(scheduler, runner)

    longer = request("longer", [*shared, 41, 42, 43])
    scheduler.add_request(longer)
    output, updates = step(scheduler, runner)
    (item,) = output.requests
    assert (item.start_position, item.token_ids) == (20, [41, 42, 43])
    assert updates[0].num_cached_tokens == 20 == longer.num_cached_tokens

    same = request("same", shared)  # a whole-prompt hit still computes the last block
    scheduler.add_request(same)
    output, _ = step(scheduler, runner)
    assert [(i.request_id, i.start_position, i.num_tokens) for i in output.requests] == [
        ("longer", 23, 1),
        ("same", 16, 4),
    ]
    other = request("other", shared, cache_namespace="lora-b")
    scheduler.add_request(other)
    output, _ = step(scheduler, runner)
    assert output.requests[-1].request_id == "other" and output.requests[-1].start_position == 0
    run_all(scheduler, runner)
    for done in (first, longer, same, other):
        assert done.output_token_ids == expected(scheduler, done)
    assert other.num_cached_tokens == 0
    assert 0 < scheduler.stats().prefix_cache_hit_rate < 1


def test_n_siblings_wait_for_the_shared_prompt_then_share_its_blocks() -> None:
    scheduler, runner = make(budget=32)
    siblings = [request(f"s{i}", prompt(18), sibling_group="g") for i in range(3)]
    for item in siblings:
        scheduler.add_request(item)
    other = request("x", prompt(5, start=30))
    scheduler.add_request(other)

    output, _ = step(scheduler, runner)
    assert [i.request_id for i in output.requests] == ["s0", "x"]  # held siblings block nobody
    output, updates = step(scheduler, runner)
    admitted = {i.request_id: i for i in output.requests if i.request_id in ("s1", "s2")}
    assert {i.start_position for i in admitted.values()} == {16}  # 4 full blocks of 4 tokens
    assert {u.num_cached_tokens for u in updates if u.request_id in admitted} == {16}
    shared_blocks = scheduler.kv.block_tables("s0")[0][:4]
    for request_id in ("s1", "s2"):
        assert scheduler.kv.block_tables(request_id)[0][:4] == shared_blocks
    assert all(scheduler.kv.pool.ref_count(block) == 3 for block in shared_blocks)
    run_all(scheduler, runner)
    for item in siblings:
        assert item.output_token_ids == expected(scheduler, item)


def test_siblings_are_not_held_without_prefix_caching() -> None:
    scheduler, runner = make(budget=64, caching=False)
    for i in range(3):
        scheduler.add_request(request(f"s{i}", prompt(18), sibling_group="g"))
    output, _ = step(scheduler, runner)
    assert [(i.request_id, i.num_tokens) for i in output.requests] == [
        ("s0", 18),
        ("s1", 18),
        ("s2", 18),
    ]


def test_fcfs_admits_in_arrival_order_and_priority_by_priority_then_arrival() -> None:
    for policy, order in (("fcfs", ["low", "high", "mid", "high2"]),
                          ("priority", ["high", "high2", "mid", "low"])):  # fmt: skip
        scheduler, runner = make(max_num_seqs=1, policy=policy)
        for name, priority in (("low", 5), ("high", 0), ("mid", 2), ("high2", 0)):
            scheduler.add_request(request(name, prompt(4), max_tokens=1, priority=priority))
        admitted = []
        while scheduler.has_unfinished_requests():
            output, _ = step(scheduler, runner)
            admitted += [i.request_id for i in output.requests if i.start_position == 0]
        assert admitted == order, policy
