"""The serving engine on tiny random models: whatever the batching, chunking and preemption,
every request gets the tokens it gets when run alone through the single-sequence generator."""

from __future__ import annotations

import random

import pytest
import torch

from ember.config import EngineConfig
from ember.engine.generator import Generator
from ember.engine.llm_engine import LLMEngine
from ember.errors import RequestError
from ember.models.loader import LoadedModel, load_model_path
from ember.sampling_params import SamplingParams
from tests.models.tiny import SPECS, VOCAB, build_hf_model, save_gguf

pytestmark = pytest.mark.models

# Exact comparisons use a float32 KV cache on both paths; 16-bit caches round
# keys and values and may flip the near-ties random tiny models are full of.


@pytest.fixture(scope="module", params=sorted(SPECS))
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model = build_hf_model(request.param)
    path = save_gguf(model, tmp_path_factory.mktemp(request.param) / "model.gguf")
    return load_model_path(path, with_tokenizer=False)


def prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 45))] for _ in range(count)]


def alone(loaded: LoadedModel, prompt: list[int], params: SamplingParams) -> list[list[int]]:
    result = Generator(loaded, kv_dtype=torch.float32).run("x", None, prompt, params)
    return [out.token_ids for out in result.outputs]


def collect(engine: LLMEngine, requests, arrive_every: int = 0) -> dict[str, list[list[int]]]:
    pending = list(enumerate(requests))
    tokens: dict[str, list[list[int]]] = {}
    finished: set[str] = set()
    steps = 0
    while pending or engine.has_unfinished_requests():
        if pending and (arrive_every == 0 or steps % arrive_every == 0):
            take = len(pending) if arrive_every == 0 else 1
            for index, (prompt, params) in pending[:take]:
                engine.add_request(str(index), prompt, params)
                tokens[str(index)] = [[] for _ in range(params.n)]
            pending = pending[take:]
        for delta in engine.step():
            for piece in delta.completions:
                tokens[delta.request_id][piece.index].extend(piece.token_ids)
            if delta.finished:
                finished.add(delta.request_id)
        steps += 1
        assert steps < 5000, "the engine did not finish"
    assert finished == set(tokens)
    return tokens


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


@pytest.mark.parametrize(
    ("budget", "arrive_every"), [(512, 0), (16, 0), (7, 3)], ids=["wide", "chunked", "trickle"]
)
def test_greedy_outputs_equal_each_request_alone(
    loaded: LoadedModel, budget: int, arrive_every: int
) -> None:
    requests = [(p, greedy(1 + i % 9)) for i, p in enumerate(prompts(8, 1))]
    config = EngineConfig(
        kv_cache_dtype="fp32",
        block_size=4,
        max_num_batched_tokens=budget,
        max_num_seqs=min(budget, 8),
        kv_cache_tokens=4096,
    )
    got = collect(LLMEngine(loaded, config), requests, arrive_every)
    for index, (prompt, params) in enumerate(requests):
        assert got[str(index)] == alone(loaded, prompt, params), f"request {index}"


def test_preemption_under_a_tiny_pool_changes_nothing(loaded: LoadedModel) -> None:
    requests = [(p, greedy(12)) for p in prompts(6, 2)]
    # Room for one or two requests at a time: the rest wait or get preempted and recomputed.
    config = EngineConfig(
        kv_cache_dtype="fp32",
        block_size=4,
        max_num_batched_tokens=24,
        max_num_seqs=8,
        kv_cache_tokens=64,
    )
    engine = LLMEngine(loaded, config)
    got = collect(engine, requests)
    assert engine.stats().num_preemptions > 0
    for index, (prompt, params) in enumerate(requests):
        assert got[str(index)] == alone(loaded, prompt, params), f"request {index}"
    assert engine.stats().kv_cache_usage == 0.0


def test_seeded_sampling_does_not_depend_on_the_batch(loaded: LoadedModel) -> None:
    params = SamplingParams(temperature=1.0, top_k=20, seed=7, max_tokens=10, ignore_eos=True)
    target = prompts(1, 3)[0]
    others = [(p, greedy(6)) for p in prompts(5, 4)]
    alone_engine = LLMEngine(
        loaded, EngineConfig(kv_cache_dtype="fp32", block_size=4, kv_cache_tokens=2048)
    )
    solo = collect(alone_engine, [(target, params)])["0"]
    busy_engine = LLMEngine(
        loaded, EngineConfig(kv_cache_dtype="fp32", block_size=4, kv_cache_tokens=2048)
    )
    crowd = collect(busy_engine, [*others, (target, params)])[str(len(others))]
    assert crowd == solo


def test_n_completions_share_the_prompt_blocks(loaded: LoadedModel) -> None:
    params = SamplingParams(n=3, temperature=0.8, seed=11, max_tokens=6, ignore_eos=True)
    prompt = prompts(1, 5)[0] * 3  # long enough for whole blocks
    engine = LLMEngine(
        loaded, EngineConfig(kv_cache_dtype="fp32", block_size=4, kv_cache_tokens=2048)
    )
    got = collect(engine, [(prompt, params)])["0"]
    assert got == alone(loaded, prompt, params)
    assert engine.stats().prefix_cache_hit_rate > 0


def test_abort_frees_everything_at_any_stage(loaded: LoadedModel) -> None:
    engine = LLMEngine(
        loaded,
        EngineConfig(kv_cache_dtype="fp32", block_size=4, max_num_batched_tokens=8, max_num_seqs=4),
    )
    for index, prompt in enumerate(prompts(6, 6)):
        engine.add_request(str(index), prompt * 2, greedy(20))
    for step in range(12):
        engine.step()
        engine.abort_request(str(step % 6))
    for index in range(6):
        engine.abort_request(str(index))
    engine.step()  # the scheduler reports the aborts; nothing is left running
    assert not engine.has_unfinished_requests()
    stats = engine.stats()
    assert stats.num_running == stats.num_waiting == 0 and stats.kv_cache_usage == 0.0
    assert engine.runner.requests == {}


def test_prompt_logprobs_survive_chunking(loaded: LoadedModel) -> None:
    prompt = prompts(1, 8)[0] + prompts(1, 9)[0]
    # max_tokens=1: the request ends in the very step that scores the end of its prompt.
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=2, logprobs=1)
    engine = LLMEngine(
        loaded,
        EngineConfig(
            kv_cache_dtype="fp32",
            block_size=4,
            max_num_batched_tokens=5,
            max_num_seqs=2,
        ),
    )
    engine.add_request("p", prompt, params)
    result = None
    while engine.has_unfinished_requests():
        for delta in engine.step():
            if delta.prompt_logprobs is not None:
                result = delta.prompt_logprobs
    expected = (
        Generator(loaded, kv_dtype=torch.float32).run("p", None, prompt, params).prompt_logprobs
    )
    assert result is not None and expected is not None and len(result) == len(prompt)
    assert result[0] is None
    for got_position, want_position in zip(result[1:], expected[1:], strict=True):
        assert got_position is not None and want_position is not None
        assert got_position.keys() == want_position.keys()
        for token, entry in got_position.items():
            assert entry.logprob == pytest.approx(want_position[token].logprob, abs=1e-4)


def test_bad_requests_get_one_line_errors(loaded: LoadedModel) -> None:
    engine = LLMEngine(loaded, EngineConfig(kv_cache_dtype="fp32", block_size=4, max_model_len=64))
    with pytest.raises(RequestError, match="empty"):
        engine.add_request("a", [], greedy(1))
    with pytest.raises(RequestError, match="outside the vocabulary"):
        engine.add_request("b", [VOCAB + 5], greedy(1))
    with pytest.raises(RequestError, match="exceeds the context length of 64"):
        engine.add_request("c", [1] * 60, greedy(10))
    engine.add_request("d", [1, 2], greedy(1))
    with pytest.raises(RequestError, match="already in use"):
        engine.add_request("d", [1, 2], greedy(1))
    assert engine.num_requests == 1


def test_default_fp16_kv_cache_runs_to_the_end(loaded: LoadedModel) -> None:
    """fp16 is the default storage; its accuracy is measured on the real models."""
    requests = [(p, greedy(5)) for p in prompts(3, 10)]
    engine = LLMEngine(loaded, EngineConfig(block_size=4, kv_cache_tokens=1024))
    assert engine.kv.keys[0].dtype == torch.float16
    got = collect(engine, requests)
    assert all(len(tokens[0]) == 5 for tokens in got.values())
    assert all(0 <= t < VOCAB for tokens in got.values() for t in tokens[0])


def test_a_failing_batch_ends_its_requests_with_an_error_and_the_engine_goes_on(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = LLMEngine(loaded, EngineConfig(kv_cache_dtype="fp32", block_size=4))
    engine.add_request("a", [1, 2, 3], greedy(4))
    real_execute = engine.runner.execute

    def broken(step):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.runner, "execute", broken)
    deltas = engine.step()
    assert [d.request_id for d in deltas] == ["a"] and deltas[0].finished
    assert deltas[0].error is not None and "boom" in deltas[0].error
    assert deltas[0].completions[0].finish_reason == "error"
    monkeypatch.setattr(engine.runner, "execute", real_execute)
    # The same id can be used again at once, and the engine still serves it.
    assert collect(engine, [([1, 2, 3], greedy(4))]) == {"0": alone(loaded, [1, 2, 3], greedy(4))}
    engine.add_request("a", [4, 5], greedy(2))
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.stats().kv_cache_usage == 0.0


def test_request_ids_can_be_reused_right_after_finishing(loaded: LoadedModel) -> None:
    engine = LLMEngine(loaded, EngineConfig(kv_cache_dtype="fp32", block_size=4))
    for round_ in range(3):
        prompt = prompts(1, 20 + round_)[0]
        assert collect(engine, [(prompt, greedy(3))]) == {"0": alone(loaded, prompt, greedy(3))}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A Q8_0 tiny model: its matmuls run in the native kernels (F32 ones run torch's)."""
    from ember import kernels

    if not kernels.fast_methods_available():
        pytest.skip("native kernels unavailable on this machine")
    model = build_hf_model("gemma3")
    path = save_gguf(model, tmp_path_factory.mktemp("q8") / "model.gguf", qtype="Q8_0")
    return load_model_path(path, with_tokenizer=False)


def logprob_trace(engine: LLMEngine, requests, arrive_every: int = 0) -> dict[str, list[float]]:
    """Per request, the logprob of every generated token (bit patterns compared exactly)."""
    pending = list(enumerate(requests))
    traces: dict[str, list[float]] = {}
    steps = 0
    while pending or engine.has_unfinished_requests():
        if pending and (arrive_every == 0 or steps % arrive_every == 0):
            take = len(pending) if arrive_every == 0 else 1
            for index, (prompt, params) in pending[:take]:
                engine.add_request(str(index), prompt, params)
                traces[str(index)] = []
            pending = pending[take:]
        for delta in engine.step():
            for piece in delta.completions:
                for token, position in zip(piece.token_ids, piece.logprobs or [], strict=True):
                    traces[delta.request_id].append(position[token].logprob)
        steps += 1
    return traces


def test_deterministic_mode_is_batch_invariant(quantized: LoadedModel) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, logprobs=0)
    requests = [(p, params) for p in prompts(10, 30)]

    def engine(budget: int, deterministic: bool = True) -> LLMEngine:
        config = EngineConfig(
            block_size=4,
            max_num_batched_tokens=budget,
            max_num_seqs=min(budget, 16),
            deterministic=deterministic,
        )
        return LLMEngine(quantized, config)

    alone_traces = {}
    for index, request in enumerate(requests):
        alone_traces[str(index)] = logprob_trace(engine(512), [request])["0"]
    assert logprob_trace(engine(512), requests) == alone_traces
    assert logprob_trace(engine(9), requests, arrive_every=2) == alone_traces
    # Without the option, batching is free to change the arithmetic (and here it does).
    assert logprob_trace(engine(512, deterministic=False), requests) != alone_traces


def test_int8_kv_cache_stays_close_to_the_exact_path(quantized: LoadedModel) -> None:
    """int8 pages (one scale per row): same first token, logprobs within a few hundredths."""
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=0)
    requests = [(p, params) for p in prompts(4, 40)]
    traces = []
    for dtype in ("fp32", "int8"):
        config = EngineConfig(block_size=4, kv_cache_dtype=dtype, kv_cache_tokens=1024)
        engine = LLMEngine(quantized, config)
        assert engine.kv.keys[0].dtype == (torch.int8 if dtype == "int8" else torch.float32)
        traces.append(logprob_trace(engine, requests))
    for rid, exact in traces[0].items():
        assert len(traces[1][rid]) == len(exact)
        assert abs(traces[1][rid][0] - exact[0]) < 0.05
