"""Admission: a full waiting queue answers 429 with Retry-After; SIGTERM drains in-flight requests
(new ones get 503), aborts what outlives the shutdown timeout, and the process exits 0."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.server.process import ServerProcess, metric, smollm2

pytestmark = pytest.mark.server

BASE_FLAGS = [
    "--port",
    "0",
    "--threads",
    "1",
    "--max-model-len",
    "1024",
    "--kv-cache-tokens",
    "4096",
]
LONG: dict[str, Any] = {"prompt": "Once upon a time", "ignore_eos": True, "stream": True}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start a server with extra flags; whatever a failed test leaves running is killed."""
    started: list[ServerProcess] = []

    def launch(*flags: str) -> ServerProcess:
        started.append(ServerProcess([smollm2(), *BASE_FLAGS, *flags], tmp_path))
        return started[-1]

    yield launch
    for process in started:
        process.kill()


@pytest.fixture
def one_at_a_time(start: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    process = start("--max-num-seqs", "1", "--max-waiting", "1")
    yield process
    assert process.terminate() == 0


def first_chunk(stream: httpx.Response, lines: Iterator[str]) -> dict[str, Any]:
    """Read up to the stream's first chunk from `lines` (keep that iterator: an abandoned line
    iterator closes the connection, which aborts the request)."""
    assert stream.status_code == 200, stream.read()
    for line in lines:
        if line.startswith("data: {"):
            chunk: dict[str, Any] = json.loads(line[len("data: ") :])
            return chunk
    raise AssertionError("the stream ended before its first chunk")


def wait_for(http: httpx.Client, name: str, value: float) -> None:
    deadline = time.monotonic() + 30
    while metric(http.get("/metrics").text, name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def test_a_full_queue_answers_429(one_at_a_time: ServerProcess) -> None:
    url = one_at_a_time.url
    with (
        httpx.Client(base_url=url, timeout=120) as http,
        httpx.Client(base_url=url, timeout=120) as streamer,
        streamer.stream("POST", "/v1/completions", json={**LONG, "max_tokens": 600}) as running,
    ):
        lines = running.iter_lines()
        first_chunk(running, lines)  # the one running request
        waiting_result: list[httpx.Response] = []
        waiter = threading.Thread(
            target=lambda: waiting_result.append(
                httpx.post(
                    f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=120
                )
            )
        )
        waiter.start()
        wait_for(http, "ember:num_requests_waiting", 1)  # the one waiting request

        refused = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and "busy" in error["message"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="SmolLM2-135M-Instruct.Q4_1.gguf",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=2,
            )
        rejected = metric(
            http.get("/metrics").text, "ember:requests_rejected_total", reason="queue_full"
        )
        assert rejected == 2
    waiter.join(120)  # leaving the stream aborted the running request: the waiting one ran
    assert waiting_result and waiting_result[0].status_code == 200


def test_sigterm_drains_in_flight_requests_and_exits_0(
    start: Callable[..., ServerProcess],
) -> None:
    server = start("--shutdown-timeout", "60")
    with (
        httpx.Client(base_url=server.url, timeout=120) as http,
        http.stream(
            "POST",
            "/v1/completions",
            json={**LONG, "max_tokens": 400, "stream_options": {"include_usage": True}},
        ) as stream,
    ):
        lines = stream.iter_lines()
        text = first_chunk(stream, lines)["choices"][0]["text"]
        server.process.send_signal(15)  # SIGTERM
        with httpx.Client(base_url=server.url, timeout=30) as probe:
            refused = _until_refused(probe)
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert "shutting down" in refused.json()["error"]["message"]
            assert probe.get("/health").status_code == 503
        finish, usage, done = None, None, False
        for line in lines:
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                assert "error" not in chunk, chunk
                for choice in chunk["choices"]:
                    text += choice["text"]
                    finish = choice["finish_reason"] or finish
                usage = chunk.get("usage") or usage
    assert done and finish == "length" and text
    assert usage is not None and usage["completion_tokens"] == 400
    assert server.process.wait(60) == 0


def _until_refused(probe: httpx.Client) -> httpx.Response:
    # The signal arrives asynchronously: the first probes may still be admitted.
    deadline = time.monotonic() + 30
    while True:
        response = probe.post("/tokenize", json={"prompt": "x"})  # cheap while still serving
        if response.status_code != 200 or time.monotonic() > deadline:
            break
        if probe.get("/health").status_code == 503:
            break
        time.sleep(0.01)
    return probe.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})


def test_sigterm_aborts_what_outlives_the_shutdown_timeout(
    start: Callable[..., ServerProcess],
) -> None:
    server = start("--shutdown-timeout", "0.2")
    with (
        httpx.Client(base_url=server.url, timeout=120) as http,
        http.stream("POST", "/v1/completions", json={**LONG, "max_tokens": 1000}) as stream,
    ):
        lines = stream.iter_lines()
        first_chunk(stream, lines)
        server.process.send_signal(15)
        rest = list(lines)
    errors = [json.loads(line[6:]) for line in rest if line.startswith('data: {"error"')]
    assert len(errors) == 1 and "shut down" in errors[0]["error"]["message"]
    assert [line for line in rest if line][-1] == "data: [DONE]"
    assert server.process.wait(60) == 0
