"""The asyncio front end on a tiny random model: concurrent streams get what the engine gives when
driven directly; a consumer that leaves frees its request; failures end requests, not the loop.
Then the offline LLM.generate over the same engine: a batch of prompts equals each one alone."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest

import ember
import ember.llm
from ember.config import EngineConfig
from ember.core import SchedulerOutput
from ember.core.request import RejectReason, RequestRejected
from ember.engine.async_engine import AsyncEngine
from ember.engine.llm_engine import LLMEngine, RequestDelta
from ember.errors import RequestError
from ember.models.loader import LoadedModel, load_model_path
from ember.runner.model_runner import RunnerOutput
from ember.sampling_params import SamplingParams
from tests.models.tiny import VOCAB, build_hf_model, save_gguf, save_hf, write_byte_level_tokenizer

pytestmark = pytest.mark.models

# fp32 KV, as in test_llm_engine: batching then never changes a greedy token.
CONFIG = EngineConfig(
    kv_cache_dtype="fp32",
    block_size=4,
    kv_cache_tokens=2048,
    max_num_seqs=8,
    max_num_batched_tokens=64,
)
T = TypeVar("T")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = save_gguf(build_hf_model("llama"), tmp_path_factory.mktemp("llama") / "model.gguf")
    return load_model_path(path, with_tokenizer=False)


def run(main: Awaitable[T]) -> T:
    async def bounded() -> T:
        # The bound turns a hang into a failure; nothing here is meant to take long.
        return await asyncio.wait_for(main, 120)

    return asyncio.run(bounded())


def prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 30))] for _ in range(count)]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


async def drain_stream(stream: AsyncIterator[RequestDelta]) -> list[RequestDelta]:
    return [delta async for delta in stream]


def tokens(deltas: list[RequestDelta]) -> list[int]:
    return [t for delta in deltas for piece in delta.completions for t in piece.token_ids]


def direct(
    loaded: LoadedModel, requests: list[tuple[list[int], SamplingParams]]
) -> list[list[int]]:
    engine = LLMEngine(loaded, CONFIG)
    got: dict[str, list[int]] = {}
    for index, (prompt, params) in enumerate(requests):
        engine.add_request(str(index), prompt, params)
        got[str(index)] = []
    while engine.has_unfinished_requests():
        for delta in engine.step():
            for piece in delta.completions:
                got[delta.request_id].extend(piece.token_ids)
    return [got[str(index)] for index in range(len(requests))]


def test_concurrent_streams_equal_the_engine_driven_directly(loaded: LoadedModel) -> None:
    requests = [(p, greedy(2 + i % 7)) for i, p in enumerate(prompts(6, 1))]

    async def main() -> list[list[RequestDelta]]:
        async with AsyncEngine(loaded, CONFIG) as engine:
            streams = [
                drain_stream(engine.generate(prompt, params, f"r{index}"))
                for index, (prompt, params) in enumerate(requests)
            ]
            results = await asyncio.gather(*streams)
            assert engine.num_requests == 0
            assert engine.healthy
        return results

    results = run(main())
    assert [tokens(deltas) for deltas in results] == direct(loaded, requests)
    for deltas in results:
        assert [d.finished for d in deltas] == [False] * (len(deltas) - 1) + [True]
        assert deltas[-1].completions[-1].finish_reason == "length"
        assert all(d.error is None for d in deltas)


async def wait_until_idle(engine: AsyncEngine) -> None:
    """Commands are served in order: once a request sent now has finished, every abort sent
    before it was applied."""
    deltas = await drain_stream(engine.generate([1, 2, 3], greedy(1)))
    assert deltas[-1].finished


def assert_nothing_held(engine: AsyncEngine) -> None:
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.kv_cache_usage) == (0, 0, 0.0)
    assert engine.num_requests == 0
    inner = engine.engine
    assert inner is not None and not inner.has_unfinished_requests()
    assert inner.runner.requests == {}


def test_a_consumer_that_leaves_aborts_its_request(loaded: LoadedModel) -> None:
    long_request = greedy(400)

    async def main() -> None:
        async with AsyncEngine(loaded, CONFIG) as engine:
            # 1. The consuming task is cancelled (the HTTP client went away).
            started = asyncio.Event()

            async def consume() -> None:
                async for _ in engine.generate(prompts(1, 2)[0], long_request, "cancelled"):
                    started.set()

            task = asyncio.create_task(consume())
            await started.wait()
            assert engine.stats().kv_cache_usage > 0
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_until_idle(engine)
            assert_nothing_held(engine)

            # 2. The consumer stops iterating and closes the stream.
            stream = engine.generate(prompts(1, 3)[0], long_request, "closed")
            await stream.__anext__()
            await stream.aclose()  # type: ignore[attr-defined]
            await wait_until_idle(engine)
            assert_nothing_held(engine)

            # 3. The consumer breaks out and drops the stream: the garbage-collected generator
            # is closed by the event loop.
            async for _ in engine.generate(prompts(1, 4)[0], long_request, "dropped"):
                break
            await asyncio.sleep(0)  # lets the loop run the generator's aclose()
            await wait_until_idle(engine)
            assert_nothing_held(engine)

    run(main())


def test_invalid_requests_fail_at_the_first_await(loaded: LoadedModel) -> None:
    small_pool = dataclasses.replace(CONFIG, kv_cache_tokens=256)

    async def main() -> None:
        async with AsyncEngine(loaded, small_pool) as engine:
            with pytest.raises(RequestError, match="empty"):
                await engine.generate([], greedy(1)).__anext__()
            with pytest.raises(RequestError, match="outside the vocabulary"):
                await engine.generate([VOCAB + 3], greedy(1)).__anext__()
            with pytest.raises(RequestError, match="exceeds the context length of 512"):
                await engine.generate([1] * 500, greedy(100)).__anext__()
            with pytest.raises(RequestRejected) as refused:
                await engine.generate([1] * 10, greedy(400)).__anext__()
            assert refused.value.reason is RejectReason.KV_POOL
            assert "\n" not in str(refused.value)

            first = engine.generate([1, 2], greedy(200), "same")
            await first.__anext__()
            with pytest.raises(RequestError, match="already in use"):
                await engine.generate([1, 2], greedy(1), "same").__anext__()
            assert await engine.abort("same")
            rest = await drain_stream(first)
            assert rest[-1].finished and rest[-1].completions[0].finish_reason == "abort"
            assert not await engine.abort("same")

            assert tokens(await drain_stream(engine.generate([5, 6], greedy(3)))) != []
            assert engine.healthy
            assert_nothing_held(engine)

    run(main())
    with pytest.raises(RequestError, match="not started"):
        run(AsyncEngine(loaded, CONFIG).generate([1], greedy(1)).__anext__())


def test_a_failing_model_step_ends_its_requests_and_the_loop_goes_on(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = prompts(2, 5)

    async def main() -> None:
        async with AsyncEngine(loaded, CONFIG) as engine:
            assert engine.engine is not None
            runner = engine.engine.runner
            execute = runner.execute
            failures: list[SchedulerOutput] = []

            def fail_once_both_run(step: SchedulerOutput) -> RunnerOutput:
                if len(step.requests) == 2 and not failures:
                    failures.append(step)
                    raise RuntimeError("injected model failure")
                return execute(step)

            # The loop thread is idle (blocked on its queue) while the runner is patched.
            monkeypatch.setattr(runner, "execute", fail_once_both_run)
            results = await asyncio.gather(
                drain_stream(engine.generate(first, greedy(30))),
                drain_stream(engine.generate(second, greedy(30))),
            )
            assert failures
            for deltas in results:
                last = deltas[-1]
                assert last.finished and last.completions[-1].finish_reason == "error"
                assert last.error is not None and "injected model failure" in last.error
            later = await drain_stream(engine.generate(first, greedy(5)))
            assert tokens(later) == direct(loaded, [(first, greedy(5))])[0]
            assert engine.healthy
            assert_nothing_held(engine)

    run(main())


def test_an_exception_escaping_step_fails_all_requests_but_not_the_loop(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with AsyncEngine(loaded, CONFIG) as engine:
            assert engine.engine is not None
            scheduler = engine.engine.scheduler
            schedule = scheduler.schedule
            calls = []

            def fail_the_third() -> SchedulerOutput:
                calls.append(1)
                if len(calls) == 3:
                    raise ValueError("injected\nscheduler failure")
                return schedule()

            monkeypatch.setattr(scheduler, "schedule", fail_the_third)
            deltas = await drain_stream(engine.generate([1, 2, 3], greedy(20)))
            assert deltas[-1].completions[-1].finish_reason == "error"
            assert deltas[-1].error == "the engine step failed: ValueError: injected"
            assert tokens(await drain_stream(engine.generate([4, 5], greedy(4)))) != []
            assert engine.healthy

    run(main())


def test_a_loop_that_cannot_go_on_reports_unhealthy(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        engine = AsyncEngine(loaded, CONFIG)
        await engine.start()
        assert engine.engine is not None

        def broken() -> SchedulerOutput:
            raise RuntimeError("scheduler state lost")

        monkeypatch.setattr(engine.engine.scheduler, "schedule", broken)
        deltas = await drain_stream(engine.generate([1, 2, 3], greedy(5)))
        assert deltas[-1].finished and deltas[-1].completions[0].finish_reason == "error"
        await engine.shutdown(30)  # the thread ended on its own: shutdown just joins it
        assert not engine.healthy and not engine.is_running
        assert engine.error is not None and "scheduler state lost" in engine.error
        assert "\n" not in engine.error
        with pytest.raises(RequestError, match="not running: .*scheduler state lost"):
            await engine.generate([1], greedy(1)).__anext__()

    run(main())


def test_drain_finishes_in_flight_requests_and_refuses_new_ones(loaded: LoadedModel) -> None:
    async def main() -> None:
        async with AsyncEngine(loaded, CONFIG) as engine:
            streams = [engine.generate(p, greedy(12)) for p in prompts(2, 6)]
            for stream in streams:
                await stream.__anext__()
            draining = asyncio.create_task(engine.drain(timeout=60))
            await asyncio.sleep(0)
            with pytest.raises(RequestError, match="shutting down"):
                await engine.generate([1, 2], greedy(1)).__anext__()
            rests = [await drain_stream(stream) for stream in streams]
            assert await draining == 0
            for rest in rests:
                assert rest[-1].completions[0].finish_reason == "length"

    run(main())


def test_drain_aborts_what_is_left_at_the_deadline(loaded: LoadedModel) -> None:
    async def main() -> None:
        async with AsyncEngine(loaded, CONFIG) as engine:
            stream = engine.generate(prompts(1, 7)[0], greedy(400))
            await stream.__anext__()
            assert await engine.drain(timeout=0) == 1
            rest = await drain_stream(stream)
            assert rest[-1].finished and rest[-1].completions[0].finish_reason == "abort"
            assert rest[-1].error is not None
            assert_nothing_held(engine)

    run(main())


def test_shutdown_ends_streams_and_joins_the_thread(loaded: LoadedModel) -> None:
    async def main() -> None:
        engine = AsyncEngine(loaded, CONFIG)
        await engine.start()
        assert engine.is_running and engine.healthy
        stream = engine.generate(prompts(1, 8)[0], greedy(400))
        await stream.__anext__()
        assert await engine.shutdown(timeout=60)
        rest = await drain_stream(stream)
        assert rest[-1].finished and rest[-1].completions[0].finish_reason == "abort"
        assert not engine.is_running and engine.error is None
        assert engine._thread is not None and not engine._thread.is_alive()
        with pytest.raises(RequestError, match="shutting down"):
            await engine.generate([1], greedy(1)).__anext__()

    run(main())


# -- the offline API over the same engine ----------------------------------------------------

LLM_CONFIG = EngineConfig(kv_cache_dtype="fp32", block_size=4, kv_cache_tokens=4096, max_waiting=2)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> ember.LLM:
    directory = tmp_path_factory.mktemp("tiny-hf")
    write_byte_level_tokenizer(directory, vocab_size=400)
    save_hf(build_hf_model("qwen3", vocab_size=400), directory)
    return ember.LLM(str(directory), engine_config=LLM_CONFIG)


def test_generate_many_prompts_equals_one_by_one(
    tiny_llm: ember.LLM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["Hello world", "the quick brown fox", "def f(x):", "café", "emoji 😀", "x"]
    inputs: list[ember.llm.PromptInput] = [*texts, {"prompt_token_ids": [5, 9, 300, 2]}]
    params = [greedy(1 + i % 5) for i in range(len(inputs))]
    params[2] = SamplingParams(n=2, temperature=0.9, seed=4, max_tokens=5, ignore_eos=True)
    engine = tiny_llm.llm_engine
    add_request = engine.add_request
    queue_full = []

    def counting_add(*args: Any, **kwargs: Any) -> None:
        try:
            add_request(*args, **kwargs)
        except RequestRejected as exc:
            queue_full.append(exc.reason is RejectReason.QUEUE_FULL)
            raise

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(engine, "add_request", counting_add)
        together = tiny_llm.generate(inputs, params)
    # max_waiting=2: the seven requests did not all fit the waiting queue at once.
    assert queue_full and all(queue_full)
    assert f"{len(inputs)}/{len(inputs)}" in capsys.readouterr().err  # the progress bar

    alone = [tiny_llm.generate(p, q)[0] for p, q in zip(inputs, params, strict=True)]
    assert capsys.readouterr().err == ""  # no bar for a single prompt
    tokenizer = tiny_llm.get_tokenizer()
    for index, (out, solo) in enumerate(zip(together, alone, strict=True)):
        assert out.finished and out.prompt_token_ids == solo.prompt_token_ids
        assert out.prompt == (texts[index] if index < len(texts) else None)
        assert [c.token_ids for c in out.outputs] == [c.token_ids for c in solo.outputs]
        assert [c.text for c in out.outputs] == [tokenizer.decode(c.token_ids) for c in out.outputs]
        assert all(c.finish_reason == "length" for c in out.outputs)
    assert len(together[2].outputs) == 2
    assert len({out.request_id for out in together}) == len(inputs)

    # The single-sequence path (stream) agrees with the engine.
    streamed = [
        t for d in tiny_llm.stream(together[0].prompt_token_ids, params[0]) for t in d.token_ids
    ]
    assert streamed == together[0].outputs[0].token_ids
    assert not engine.has_unfinished_requests() and engine.stats().kv_cache_usage == 0.0


def test_generate_checks_every_prompt_before_any_work(tiny_llm: ember.LLM) -> None:
    engine = tiny_llm.llm_engine
    too_long = {"prompt_token_ids": [1] * (tiny_llm.max_model_len + 1)}
    with pytest.raises(RequestError, match="shorten the prompt"):
        tiny_llm.generate(["Hello", "world", too_long], greedy(2))
    with pytest.raises(RequestError, match="2 sampling params for 3 prompts"):
        tiny_llm.generate(["a", "b", "c"], [greedy(1), greedy(1)])
    assert engine.num_requests == 0 and engine.stats().num_waiting == 0
    assert tiny_llm.llm_engine is engine


def test_a_failed_batch_raises_and_the_llm_keeps_working(
    tiny_llm: ember.LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = tiny_llm.llm_engine.runner

    def fail(step: SchedulerOutput) -> RunnerOutput:
        raise RuntimeError("injected model failure\nwith a second line")

    with monkeypatch.context() as patch:
        patch.setattr(runner, "execute", fail)
        with pytest.raises(RequestError, match=r"^prompt 0: .*injected model failure") as failed:
            tiny_llm.generate(["Hello", "world"], greedy(3), use_tqdm=False)
    assert "\n" not in str(failed.value)
    assert not tiny_llm.llm_engine.has_unfinished_requests()
    [out] = tiny_llm.generate("Hello", greedy(3))
    assert len(out.outputs[0].token_ids) == 3


def test_engine_config_and_max_model_len(tiny_llm: ember.LLM) -> None:
    with pytest.raises(RequestError, match="max_model_len must be positive"):
        ember.LLM("never-loaded", max_model_len=0)
    assert tiny_llm.max_model_len == tiny_llm.llm_engine.max_model_len == 512
