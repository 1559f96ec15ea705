"""Request lifecycles: rejection, preemption, aborts at every stage, stopping, failure."""

from __future__ import annotations

import re

import pytest

from ember.core import (
    CacheConfig,
    FinishReason,
    RejectReason,
    Request,
    RequestRejected,
    RequestStatus,
    Scheduler,
    SchedulerConfig,
    StopCriteria,
)
from ember.errors import RequestError

from .fake_runner import FakeRunner, ScriptedRunner, reference_output, run_all, step
from .invariants import check_state

VOCAB = 50
EOS = 2


def make(
    budget: int = 16,
    num_blocks: int = 64,
    caching: bool = True,
    max_model_len: int = 32,
    **options: object,
) -> tuple[Scheduler, FakeRunner]:
    scheduler = Scheduler(
        SchedulerConfig(
            max_num_batched_tokens=budget,
            max_model_len=max_model_len,
            **{"max_num_seqs": 8, **options},  # type: ignore[arg-type]
        ),
        CacheConfig(block_size=4, num_blocks=num_blocks, enable_prefix_caching=caching),
    )
    return scheduler, FakeRunner(scheduler, vocab=VOCAB)


def prompt(length: int, start: int = 1) -> list[int]:
    return [(start + i) % VOCAB for i in range(length)]


def expected(scheduler: Scheduler, request: Request) -> list[int]:
    return reference_output(request.prompt_token_ids, request.stop, "", 32, VOCAB)


# -- rejection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "stop", "reason", "message"),
    [
        (
            30,
            StopCriteria(max_tokens=3),
            RejectReason.TOO_LONG,
            "prompt (30 tokens) plus max_tokens",
        ),
        (32, StopCriteria(), RejectReason.TOO_LONG, "plus one new token exceeds the context"),
        (0, StopCriteria(), RejectReason.INVALID, "empty prompt"),
        (4, StopCriteria(max_tokens=20), RejectReason.KV_POOL, "may need 6 KV blocks"),
    ],
)
def test_a_request_that_can_never_run_is_rejected_at_once(
    tokens: int, stop: StopCriteria, reason: RejectReason, message: str
) -> None:
    scheduler, _ = make(num_blocks=6)  # 5 usable blocks = 20 tokens
    with pytest.raises(RequestRejected, match=re.escape(message)) as raised:
        scheduler.add_request(Request("r", prompt(tokens), stop))
    assert raised.value.reason is reason
    assert isinstance(raised.value, RequestError) and "\n" not in str(raised.value)
    assert not scheduler.has_unfinished_requests()
    scheduler.add_request(Request("fits", prompt(4), StopCriteria(max_tokens=16)))


def test_a_full_waiting_queue_refuses_more_until_it_drains() -> None:
    scheduler, runner = make(max_waiting=2)
    scheduler.add_request(Request("a", prompt(4)))
    scheduler.add_request(Request("b", prompt(4)))
    with pytest.raises(RequestRejected, match="2 requests are already waiting") as raised:
        scheduler.add_request(Request("c", prompt(4)))
    assert raised.value.reason is RejectReason.QUEUE_FULL
    step(scheduler, runner)
    scheduler.add_request(Request("c", prompt(4)))


def test_request_ids_must_be_unique_among_live_requests() -> None:
    scheduler, runner = make()
    scheduler.add_request(Request("a", prompt(4), StopCriteria(max_tokens=1)))
    with pytest.raises(RequestRejected, match="'a' is already in use"):
        scheduler.add_request(Request("a", prompt(4)))
    run_all(scheduler, runner)
    scheduler.add_request(Request("a", prompt(4)))  # free again once finished


# -- preemption ------------------------------------------------------------------------------------


@pytest.mark.parametrize("caching", [False, True])
def test_a_preempted_request_resumes_and_produces_the_same_tokens(caching: bool) -> None:
    scheduler, runner = make(num_blocks=9, caching=caching)  # 8 usable; each needs up to 7
    first = Request("first", prompt(8), StopCriteria(max_tokens=20))
    second = Request("second", prompt(8, start=20), StopCriteria(max_tokens=20))
    scheduler.add_request(first)
    scheduler.add_request(second)
    kept = None
    resumed = None
    while scheduler.has_unfinished_requests():
        output, _ = step(scheduler, runner)
        if output.preempted_ids and kept is None:
            assert output.preempted_ids == ["second"]  # FCFS: the newest goes
            assert second.status is RequestStatus.PREEMPTED and second.num_computed_tokens == 0
            kept = list(second.output_token_ids)
            assert kept
        for item in output.requests:
            if item.request_id == "second" and kept is not None and resumed is None:
                resumed = item
    assert resumed is not None and kept is not None
    assert second.output_token_ids[: len(kept)] == kept  # generated tokens survive preemption
    if not caching:
        assert resumed.start_position == 0
        assert resumed.token_ids[:8] == second.prompt_token_ids
    assert second.num_preemptions >= 1 and scheduler.stats().num_preemptions >= 1
    assert first.output_token_ids == expected(scheduler, first)
    assert second.output_token_ids == expected(scheduler, second)
    assert scheduler.kv.num_free_blocks == scheduler.kv.pool.capacity


@pytest.mark.parametrize(("policy", "victim"), [("fcfs", "second"), ("priority", "first")])
def test_preemption_takes_the_lowest_precedence_request(policy: str, victim: str) -> None:
    scheduler, runner = make(num_blocks=9, policy=policy)
    scheduler.add_request(Request("first", prompt(8), StopCriteria(max_tokens=20), priority=5))
    scheduler.add_request(
        Request("second", prompt(8, start=20), StopCriteria(max_tokens=20), priority=0)
    )
    while scheduler.has_unfinished_requests():
        output, _ = step(scheduler, runner)
        if output.preempted_ids:
            assert output.preempted_ids == [victim]
            break
    else:
        pytest.fail("no preemption happened")


# -- aborts ----------------------------------------------------------------------------------------

STAGES = ["waiting", "mid_prefill", "decoding", "preempted", "between_schedule_and_update"]


@pytest.mark.parametrize("stage", STAGES)
def test_abort_at_every_stage_frees_everything(stage: str) -> None:
    scheduler, runner = make(budget=8, num_blocks=9)
    other = Request("other", prompt(8, start=30), StopCriteria(max_tokens=20))
    target = Request(
        "target", prompt(20 if stage == "mid_prefill" else 8), StopCriteria(max_tokens=8)
    )
    scheduler.add_request(other)
    scheduler.add_request(target)
    pending = None
    sampled: dict[str, list[int]] = {}
    if stage == "mid_prefill":
        step(scheduler, runner)  # other: 8 tokens, then target waits for budget
        step(scheduler, runner)
        assert target.status is RequestStatus.RUNNING
        assert 0 < target.num_computed_tokens < target.num_prompt_tokens
    elif stage == "decoding":
        for _ in range(3):
            step(scheduler, runner)
        assert target.status is RequestStatus.RUNNING and target.num_output_tokens > 0
    elif stage == "preempted":
        for _ in range(50):
            step(scheduler, runner)
            if target.status is RequestStatus.PREEMPTED:
                break
        assert target.status is RequestStatus.PREEMPTED and target.num_output_tokens > 0
    elif stage == "between_schedule_and_update":
        for _ in range(2):
            step(scheduler, runner)
        pending = scheduler.schedule()
        assert "target" in [item.request_id for item in pending.requests]
        sampled = runner.execute(pending)  # the abort arrives while the step runs
    status_before = target.status
    assert scheduler.abort_requests(["target", "unknown"]) == ["target"]
    assert target.status is RequestStatus.FINISHED_ABORTED and status_before is not target.status
    assert target.finish_reason is FinishReason.ABORT
    assert "target" not in scheduler.requests and not scheduler.kv.has_blocks("target")
    if pending is not None:
        updates = scheduler.update_from_output(pending, sampled)
        assert "target" not in [update.request_id for update in updates]
    check_state(scheduler)
    output, _ = step(scheduler, runner)
    assert output.finished_ids == ["target"]
    run_all(scheduler, runner)
    assert other.output_token_ids == expected(scheduler, other)
    assert scheduler.kv.num_free_blocks == scheduler.kv.pool.capacity


def test_finish_requests_ends_a_request_for_a_stop_string() -> None:
    scheduler, runner = make()
    request = Request("a", prompt(4), StopCriteria(max_tokens=20))
    scheduler.add_request(request)
    step(scheduler, runner)
    assert scheduler.finish_requests(["a"]) == ["a"]
    assert request.status is RequestStatus.FINISHED_STOPPED
    assert request.finish_reason is FinishReason.STOP
    assert not scheduler.has_unfinished_requests()
    assert scheduler.kv.num_free_blocks == scheduler.kv.pool.capacity


# -- stopping --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop", "script", "output", "reason"),
    [
        (StopCriteria(eos_token_ids=frozenset({EOS})), [5, 6, EOS, 7], [5, 6, EOS], "stop"),
        (
            StopCriteria(eos_token_ids=frozenset({EOS}), ignore_eos=True, max_tokens=4),
            [5, EOS, 6, 7, 8],
            [5, EOS, 6, 7],
            "length",
        ),
        (StopCriteria(stop_token_ids=frozenset({9})), [5, 9, 6], [5, 9], "stop"),
        (
            StopCriteria(eos_token_ids=frozenset({EOS}), min_tokens=3),
            [EOS, 5, EOS, 6],
            [EOS, 5, EOS],
            "stop",
        ),
        (StopCriteria(max_tokens=2), [5, 6, 7], [5, 6], "length"),
        (StopCriteria(), [5] * 40, [5] * 4, "length"),  # max_model_len 32, prompt 28
    ],
)
def test_token_stops(stop: StopCriteria, script: list[int], output: list[int], reason: str) -> None:
    scheduler, _ = make()
    request = Request("a", prompt(28), stop)
    scheduler.add_request(request)
    streamed = run_all(scheduler, ScriptedRunner({"a": script}))
    assert streamed["a"] == output == request.output_token_ids
    assert request.finish_reason == reason
    if 9 in output:
        assert request.stop_reason == 9


def test_several_sampled_tokens_stop_at_the_first_stop() -> None:
    scheduler, _ = make()
    request = Request("a", prompt(4), StopCriteria(eos_token_ids=frozenset({EOS})))
    scheduler.add_request(request)
    output = scheduler.schedule()
    (update,) = scheduler.update_from_output(output, {"a": [5, EOS, 6]})
    assert update.new_token_ids == [5, EOS] and update.finish_reason is FinishReason.STOP
    assert update.finished


# -- misuse and failure ----------------------------------------------------------------------------


def test_the_call_order_is_enforced() -> None:
    scheduler, _ = make()
    scheduler.add_request(Request("a", prompt(4)))
    first = scheduler.schedule()
    with pytest.raises(RuntimeError, match="before update_from_output"):
        scheduler.schedule()
    with pytest.raises(ValueError, match="no sampled token for request 'a'"):
        scheduler.update_from_output(first, {})
    assert scheduler.update_from_output(first, {"a": [5]})[0].new_token_ids == [5]
    with pytest.raises(RuntimeError, match="output of the last schedule"):
        scheduler.update_from_output(first, {"a": [5]})


def test_an_empty_step() -> None:
    scheduler, _ = make()
    output = scheduler.schedule()
    assert output.is_empty and output.num_scheduled_tokens == 0
    assert scheduler.update_from_output(output, {}) == []


@pytest.mark.parametrize(
    ("prompt_length", "max_tokens", "budget", "max_model_len"),
    [(40, 4, 64, 64), (4, 25, 16, 32)],
    ids=["at-admission", "while-growing"],
)
def test_a_request_that_cannot_fit_even_alone_fails_instead_of_hanging(
    prompt_length: int,
    max_tokens: int,
    budget: int,
    max_model_len: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scheduler, runner = make(budget=budget, num_blocks=6, max_model_len=max_model_len)
    # 5 usable blocks hold 20 tokens. Pretend the admission check let the request through, to
    # exercise the safety net behind it.
    monkeypatch.setattr(scheduler.kv, "max_blocks_held", lambda *args: 0)
    request = Request("a", prompt(prompt_length), StopCriteria(max_tokens=max_tokens))
    scheduler.add_request(request)
    failures = []
    finished_ids = []
    for _ in range(40):
        output = scheduler.schedule()
        finished_ids += output.finished_ids
        updates = scheduler.update_from_output(output, runner.execute(output))
        failures += [u for u in updates if u.finish_reason is FinishReason.ERROR]
        if not scheduler.has_unfinished_requests():
            break
    (failure,) = failures
    assert failure.request_id == "a" and "does not fit the KV cache" in (failure.error or "")
    assert request.status is RequestStatus.FINISHED_ERROR
    assert scheduler.kv.num_free_blocks == scheduler.kv.pool.capacity
    assert finished_ids == ["a"]  # the runner learns it in the step it failed


def test_stats() -> None:
    scheduler, runner = make(max_num_seqs=1)
    scheduler.add_request(Request("a", prompt(8), StopCriteria(max_tokens=4)))
    scheduler.add_request(Request("b", prompt(8), StopCriteria(max_tokens=4)))
    step(scheduler, runner)
    stats = scheduler.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_preemptions) == (1, 1, 0)
    assert stats.kv_cache_usage == pytest.approx(2 / 63)
    run_all(scheduler, runner)
    stats = scheduler.stats()
    assert stats.kv_cache_usage == 0.0 and stats.num_running == stats.num_waiting == 0
    assert stats.prefix_cache_hit_rate == 4 / 16  # b found a's first block
