"""`ember bench serve` against a fake OpenAI-compatible server on 127.0.0.1: what it measures,
what each traffic shape sends, what it writes, and its one-line errors. The statistics are
checked on fixed numbers. No timing assertion beyond "not before the fake sent it"."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ember.bench.serve import BenchConfig, BenchResult, LoadLevel, run_bench
from ember.bench.serve_client import RequestResult, SSEDecoder
from ember.bench.serve_stats import Slo, percentile, summarize
from ember.bench.server_metrics import parse_prometheus, prefix_cache_hit_rate
from ember.bench.traffic import TrafficOptions, build_workload
from ember.cli import build_parser, main
from tests.bench.fake_openai_server import Behaviour, FakeOpenAIServer


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def bench(server: FakeOpenAIServer, **overrides: object) -> BenchResult:
    settings: dict[str, object] = {
        "base_url": server.base_url + "/v1",
        "levels": [LoadLevel(concurrency=2)],
        "num_requests": 4,
        "max_tokens": 8,
        "progress": False,
    }
    settings.update(overrides)
    return run_bench(BenchConfig(**settings))  # type: ignore[arg-type]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["bench", "serve", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- statistics on fixed numbers ---------------------------------------------------------------


def test_percentile_interpolates_linearly_between_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([4, 1, 3, 2], 0) == 1 and percentile([4, 1, 3, 2], 100) == 4
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    values = [random.Random(3).uniform(0, 100) for _ in range(37)]
    for q in (50, 90, 95, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def _result(ttft: float, e2e: float, tokens: int, prompt: int | None = 10) -> RequestResult:
    gaps = [(e2e - ttft) / (tokens - 1)] * (tokens - 1) if tokens > 1 else []
    return RequestResult(
        ok=True, ttft=ttft, e2e=e2e, itl=gaps, output_tokens=tokens, prompt_tokens=prompt
    )


def test_tpot_throughput_and_goodput_on_fixed_numbers() -> None:
    results = [
        _result(ttft=0.1, e2e=1.1, tokens=11),  # TPOT 100 ms
        _result(ttft=0.3, e2e=0.8, tokens=6),  # TPOT 100 ms, TTFT too slow for the SLO
        _result(ttft=0.2, e2e=2.2, tokens=11),  # TPOT 200 ms: too slow
        _result(ttft=0.05, e2e=0.05, tokens=1),  # no TPOT: cannot miss it
        RequestResult(ok=False, error="500 boom", e2e=0.01),
    ]
    assert results[0].tpot == pytest.approx(0.1)
    assert results[3].tpot is None and results[4].tpot is None
    summary = summarize(results, seconds=2.0, slo=Slo(ttft_ms=250, tpot_ms=150))
    assert (summary.completed, summary.failed) == (4, 1)
    assert summary.errors == {"500 boom": 1}
    assert summary.throughput.requests == pytest.approx(2.0)
    assert summary.throughput.output_tokens == pytest.approx((11 + 6 + 11 + 1) / 2)
    assert summary.throughput.total_tokens == pytest.approx((29 + 40) / 2)
    assert summary.extras["slo_met"] == 2
    assert summary.throughput.goodput == pytest.approx(1.0)
    ttft = summary.latencies.ttft
    assert ttft.count == 4 and ttft.mean == pytest.approx(162.5)
    assert ttft.percentiles[50] == pytest.approx(150.0)
    tpot = summary.latencies.tpot
    assert tpot.count == 3 and tpot.percentiles[50] == pytest.approx(100.0)
    assert summary.latencies.itl.count == 10 + 5 + 10
    assert summary.latencies.e2e.percentiles[99] == pytest.approx(
        float(np.percentile([1100, 800, 2200, 50], 99))
    )
    # Without an SLO there is no goodput; without prompt counts no total throughput.
    plain = summarize([_result(0.1, 1.1, 11, prompt=None)], 1.0, Slo())
    assert plain.throughput.goodput is None and plain.throughput.total_tokens is None


def test_sse_decoder_joins_data_lines_and_skips_the_rest() -> None:
    decoder = SSEDecoder()
    lines = [": keep-alive", "event: message", 'data: {"a":', "data:1}\r", "", "data: [DONE]"]
    events = [data for line in lines for data in decoder.feed(line)]
    assert events == ['{"a":\n1}']
    assert list(decoder.flush()) == ["[DONE]"]


def test_prefix_cache_hit_rate_from_each_server_flavour() -> None:
    text = (
        "# HELP vllm:prefix_cache_hits_total hits\n"
        'vllm:prefix_cache_hits_total{engine="0",model_name="x y"} 30\n'
        'vllm:prefix_cache_hits_total{engine="1"} 10\n'
        "vllm:prefix_cache_queries_total 100\n"
        "not a sample line\n"
    )
    after = parse_prometheus(text)
    assert after["vllm:prefix_cache_hits_total"] == 40
    before = {"vllm:prefix_cache_hits_total": 20.0, "vllm:prefix_cache_queries_total": 60.0}
    assert prefix_cache_hit_rate(before, after) == pytest.approx(0.5)
    # ember: prefix, no _total suffix
    ember = {"ember:prefix_cache_hits": 5.0, "ember:prefix_cache_queries": 10.0}
    assert prefix_cache_hit_rate({}, ember) is None  # counters absent before: no delta
    assert prefix_cache_hit_rate(dict.fromkeys(ember, 0.0), ember) == pytest.approx(0.5)
    assert prefix_cache_hit_rate(ember, ember) is None  # nothing was looked up
    assert prefix_cache_hit_rate(None, {"vllm:gpu_prefix_cache_hit_rate": 0.75}) == 0.75
    assert prefix_cache_hit_rate({}, {"ember:prefix_cache_hit_rate": 40.0}) == pytest.approx(0.4)
    llama_before = {"llamacpp:prompt_tokens_total": 10.0, "llamacpp:prompt_tokens_cached_total": 0}
    llama_after = {"llamacpp:prompt_tokens_total": 40.0, "llamacpp:prompt_tokens_cached_total": 90}
    assert prefix_cache_hit_rate(llama_before, llama_after) == pytest.approx(0.75)
    assert prefix_cache_hit_rate({}, {"process_cpu_seconds_total": 3.0}) is None
    assert prefix_cache_hit_rate(None, None) is None


# --- traffic shapes ----------------------------------------------------------------------------


def test_workloads_are_deterministic_and_sized() -> None:
    for shape in ("diverse", "shared-prefix", "structured", "agent"):
        first = build_workload(shape, 10, seed=7)
        assert first == build_workload(shape, 10, seed=7)
        assert first != build_workload(shape, 10, seed=8)
        assert sum(len(c.turns) for c in first) == 10
    agent = build_workload("agent", 10, seed=0, options=TrafficOptions(agent_turns=4))
    assert [len(c.turns) for c in agent] == [4, 4, 2]
    diverse = build_workload("diverse", 40, seed=0, options=TrafficOptions(prompt_words=(8, 400)))
    lengths = [len(c.turns[0].messages[0]["content"].split()) for c in diverse]
    assert min(lengths) < 60 and max(lengths) > 200  # varied, not one size
    with pytest.raises(ValueError, match="unknown traffic shape"):
        build_workload("bursty", 1, 0)


# --- against the fake server --------------------------------------------------------------------


def test_measures_ttft_itl_and_tokens_of_each_stream(fake: FakeOpenAIServer) -> None:
    behaviour = fake.behaviour
    result = bench(fake)
    [level] = result.levels
    assert result.model == "fake-model"  # the first of GET /v1/models
    assert level.summary.completed == 4 and level.summary.failed == 0
    for request in level.results:
        assert request.ok and request.error is None and request.retries == 0
        assert request.output_tokens == behaviour.tokens  # from usage
        assert request.prompt_tokens == 100 and request.cached_tokens == 50
        assert len(request.itl) == behaviour.tokens - 1
        assert request.ttft is not None and request.ttft >= behaviour.first_token_delay
        # The last chunk cannot arrive before the fake sent it.
        last_chunk = request.ttft + sum(request.itl)
        assert last_chunk >= behaviour.first_token_delay + 3 * behaviour.token_delay
        assert request.e2e >= last_chunk
        assert request.tpot == pytest.approx((request.e2e - request.ttft) / 3)
        assert request.text == "tok0 tok1 tok2 tok3 "
    assert level.summary.latencies.ttft.percentiles[50] >= 1000 * behaviour.first_token_delay
    assert level.summary.extras["prefix_cache_hit_rate"] == pytest.approx(0.5)
    assert level.summary.extras["cached_prompt_token_rate"] == pytest.approx(0.5)
    for sent in fake.chat_requests():
        body = sent.body
        assert sent.path == "/v1/chat/completions"
        assert body["model"] == "fake-model" and body["max_tokens"] == 8 and body["stream"]
        assert body["stream_options"] == {"include_usage": True}
        assert "response_format" not in body and "tools" not in body


def test_counts_chunks_without_usage_and_sends_completions(fake: FakeOpenAIServer) -> None:
    fake.behaviour.include_usage = False
    fake.behaviour.metrics = None
    result = bench(fake, endpoint="completions", shape="agent", model="my-model")
    [level] = result.levels
    assert all(r.ok and r.output_tokens == 4 and r.prompt_tokens is None for r in level.results)
    assert level.summary.extras["prefix_cache_hit_rate"] is None
    assert level.summary.throughput.total_tokens is None
    for sent in fake.chat_requests():
        assert sent.path == "/v1/completions" and sent.body["model"] == "my-model"
        assert sent.body["prompt"].startswith("Tools: ") and "User: " in sent.body["prompt"]
        assert "messages" not in sent.body


def test_shared_prefix_requests_share_one_long_system_prompt(fake: FakeOpenAIServer) -> None:
    bench(fake, shape="shared-prefix", num_requests=6)
    sent = fake.chat_requests()
    assert len(sent) == 6
    systems = {r.body["messages"][0]["content"] for r in sent}
    assert len(systems) == 1 and len(systems.pop().split()) >= 900
    assert all(r.body["messages"][0]["role"] == "system" for r in sent)
    questions = [r.body["messages"][1]["content"] for r in sent]
    assert len(set(questions)) == 6 and all(len(q.split()) < 60 for q in questions)


def test_agent_conversations_resend_a_growing_history_in_order(fake: FakeOpenAIServer) -> None:
    bench(fake, shape="agent", num_requests=6, traffic=TrafficOptions(agent_turns=3))
    sent = fake.chat_requests()
    conversations: dict[str, list[int]] = {}
    for index, request in enumerate(sent):
        assert [t["function"]["name"] for t in request.body["tools"]] == [
            "search_records",
            "read_record",
            "get_weather",
        ]
        assert request.body["tool_choice"] == "auto"
        conversations.setdefault(request.body["messages"][1]["content"], []).append(index)
    assert sorted(len(turns) for turns in conversations.values()) == [3, 3]
    for turns in conversations.values():
        histories = [sent[i].body["messages"] for i in turns]
        # Each turn re-sends the previous one's messages plus a tool call and its result.
        histories.sort(key=len)
        for earlier, later in zip(histories, histories[1:], strict=False):
            assert later[: len(earlier)] == earlier and len(later) == len(earlier) + 2
            call, reply = later[-2:]
            assert call["role"] == "assistant" and call["tool_calls"][0]["type"] == "function"
            json.loads(call["tool_calls"][0]["function"]["arguments"])
            assert reply["role"] == "tool"
            assert reply["tool_call_id"] == call["tool_calls"][0]["id"]
        # A turn is sent only once the previous answer has ended.
        for before, after in zip(turns, turns[1:], strict=False):
            assert fake.events.index(("end", before)) < fake.events.index(("start", after))


def test_structured_sends_the_schema_and_checks_the_answers(fake: FakeOpenAIServer) -> None:
    result = bench(fake, shape="structured", num_requests=3)
    for sent in fake.chat_requests():
        response_format = sent.body["response_format"]
        assert response_format["type"] == "json_schema"
        schema = response_format["json_schema"]["schema"]
        assert schema["required"] == ["name", "age", "city", "skills"]
    assert result.levels[0].summary.extras["structured_valid_rate"] == 1.0


def test_structured_rejected_by_the_server_fails_clearly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeOpenAIServer(Behaviour(reject_response_format=True)) as server:
        code, out, err = run_cli(
            capsys, "--base-url", server.base_url, "--shape", "structured", "--num-requests",
            "3", "--no-progress",
        )  # fmt: skip
    line = one_line_error(code, err)
    assert "all 3 requests failed at c=1" in line
    assert "400 Bad Request: response_format json_schema is not supported" in line
    assert "ok / failed" in out and "0 / 3" in out
    assert "failed at c=1: 3 x 400 Bad Request" in out


def test_sweep_writes_json_and_chart(
    fake: FakeOpenAIServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "runs" / "result.json"
    code, out, err = run_cli(
        capsys, "--base-url", fake.base_url, "--concurrency-sweep", "1,2", "--num-requests", "4",
        "--max-tokens", "8", "--slo-ttft-ms", "60000", "--slo-tpot-ms", "60000",
        "--output", str(output), "--api-key", "secret-key",
    )  # fmt: skip
    assert code == 0, err
    assert "c=1" in out and "c=2" in out and "TTFT ms p99" in out and "50.0%" in out
    chart = output.with_suffix(".png")
    assert f"wrote {output}" in out and f"wrote {chart}" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(output.read_text())
    assert "secret-key" not in output.read_text()
    assert [level["concurrency"] for level in data["levels"]] == [1, 2]
    for level in data["levels"]:
        assert level["completed"] == 4 and level["failed"] == 0
        assert level["prefix_cache_hit_rate"] == pytest.approx(0.5)
        assert level["goodput"] == pytest.approx(level["request_throughput"])
        assert set(level["ttft_ms"]) == {"count", "mean", "p50", "p90", "p95", "p99"}
        assert len(level["requests"]) == 4 and level["requests"][0]["ttft_ms"] >= 50
    # Level i uses seed + i: the second level's prompts are new to the server's cache.
    prompts = [r.body["messages"][0]["content"] for r in fake.chat_requests()]
    assert not set(prompts[:4]) & set(prompts[4:])
    assert all(r.headers["authorization"] == "Bearer secret-key" for r in fake.requests)


def test_open_loop_with_a_request_rate(fake: FakeOpenAIServer) -> None:
    result = bench(fake, levels=[LoadLevel(request_rate=200.0)], num_requests=5)
    assert result.levels[0].summary.completed == 5
    capped = bench(fake, levels=[LoadLevel(concurrency=1, request_rate=200.0)], num_requests=3)
    assert capped.levels[0].summary.completed == 3


def test_warmup_requests_are_sent_but_not_measured(fake: FakeOpenAIServer) -> None:
    result = bench(fake, warmup=2, num_requests=3)
    assert len(fake.chat_requests()) == 5 and len(result.levels[0].results) == 3
    warm, measured = fake.chat_requests()[:2], fake.chat_requests()[2:]
    # Another seed: the warm-up never pre-fills the cache with a measured prompt.
    prompts = {r.body["messages"][0]["content"] for r in measured}
    assert not prompts & {r.body["messages"][0]["content"] for r in warm}


def test_stale_kept_alive_connection_is_retried_on_a_fresh_one() -> None:
    with FakeOpenAIServer(Behaviour(drop_reused=True)) as server:
        result = bench(server, levels=[LoadLevel(concurrency=1)], num_requests=3)
    [level] = result.levels
    assert level.summary.completed == 3
    assert sum(r.retries for r in level.results) >= 1
    assert level.summary.extras["prefix_cache_hit_rate"] == pytest.approx(0.5)


def test_error_in_the_stream_fails_the_request() -> None:
    with FakeOpenAIServer(Behaviour(stream_error=True, metrics="ember")) as server:
        result = bench(server, num_requests=2)
    [level] = result.levels
    assert level.summary.failed == 2
    assert level.summary.errors == {"error in the stream: engine crashed": 2}
    assert level.summary.extras["prefix_cache_hit_rate"] == pytest.approx(0.25)


def test_progress_bar_goes_to_stderr(
    fake: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--base-url", fake.base_url, "--num-requests", "2")
    assert code == 0, err
    assert "2/2" in err and "2/2" not in out


# --- errors ------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    line = one_line_error(*run_cli(capsys, "--base-url", url, "--no-progress")[::2])
    assert line == f"error: cannot reach {url}: connection refused or no route"


def test_refused_api_key_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAIServer(Behaviour(api_key="right")) as server:
        args = ["--base-url", server.base_url, "--api-key", "wrong", "--no-progress"]
        line = one_line_error(*run_cli(capsys, *args)[::2])
    assert "401 Unauthorized: invalid api key" in line and "--api-key" in line


def test_non_openai_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAIServer(Behaviour(html=True)) as server:
        line = one_line_error(*run_cli(capsys, "--base-url", server.base_url)[::2])
    assert "did not answer like an OpenAI-compatible server (text/html" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency-sweep", "1,x"], "--concurrency-sweep takes whole numbers"),
        (["--concurrency", "2", "--concurrency-sweep", "1,2"], "not both"),
        (["--concurrency", "0"], "concurrency must be at least 1"),
        (["--prompt-words", "5"], "--prompt-words takes LO,HI"),
        (["--base-url", "localhost:8000"], "--base-url must look like"),
    ],
)
def test_bad_options_are_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    line = one_line_error(*run_cli(capsys, *args)[::2])
    assert message in line


def test_bench_model_mode_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["bench", "smollm2-135m-instruct", "-p", "64", "-n", "8"])
    assert args.handler.__name__ == "_cmd_bench" and args.model == "smollm2-135m-instruct"
    assert main(["bench", "serve", "--help"]) == 0
    assert "usage: ember bench serve" in capsys.readouterr().out
