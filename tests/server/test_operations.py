"""Operations on the shared server: health, Prometheus metrics, request ids and the access log,
CORS off by default, and a client that leaves mid-request has its request aborted."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.server.process import ServerProcess, metric

pytestmark = pytest.mark.server

MODEL_LABEL = {"model_name": "smol"}
LONG = {"model": "smol", "prompt": "Once upon a time", "max_tokens": 128, "ignore_eos": True}


def test_health(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert http.get("/version").json()["version"]


def test_metrics_use_vllm_names_and_count_requests(http: httpx.Client) -> None:
    before = http.get("/metrics").text
    body = {"model": "smol", "prompt": "Hello", "max_tokens": 5, "ignore_eos": True}
    usage = http.post("/v1/completions", json=body).json()["usage"]
    after = http.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    for name in (
        "ember:num_requests_running",
        "ember:num_requests_waiting",
        "ember:kv_cache_usage_perc",
        "ember:prefix_cache_hit_rate",
        "ember:prefix_cache_queries_total",
        "ember:prefix_cache_hits_total",
        "ember:num_preemptions_total",
        "ember:request_success_total",
        "ember:prompt_tokens_total",
        "ember:generation_tokens_total",
        "ember:time_to_first_token_seconds_bucket",
        "ember:inter_token_latency_seconds_bucket",
        "ember:e2e_request_latency_seconds_bucket",
    ):
        assert f"\n{name}{{" in text, name

    def grew(name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert grew("ember:generation_tokens_total", **MODEL_LABEL) == usage["completion_tokens"] == 5
    assert grew("ember:prompt_tokens_total", **MODEL_LABEL) == usage["prompt_tokens"]
    assert grew("ember:request_success_total", finished_reason="length", **MODEL_LABEL) == 1
    assert grew("ember:time_to_first_token_seconds_count", **MODEL_LABEL) == 1
    assert grew("ember:inter_token_latency_seconds_count", **MODEL_LABEL) == 4
    assert grew("ember:e2e_request_latency_seconds_count", **MODEL_LABEL) == 1
    assert metric(text, "ember:num_requests_running", **MODEL_LABEL) == 0


def test_request_id_is_echoed_and_logged(http: httpx.Client, server: ServerProcess) -> None:
    response = http.post(
        "/v1/completions",
        json={"model": "smol", "prompt": "Hi", "max_tokens": 1},
        headers={"X-Request-Id": "test-request-42"},
    )
    assert response.headers["x-request-id"] == "test-request-42"
    generated = http.get("/health").headers["x-request-id"]
    assert len(generated) >= 16
    record = _access_record(server, "test-request-42")
    assert record["path"] == "/v1/completions" and record["method"] == "POST"
    assert record["status"] == 200 and record["duration_ms"] >= 0
    assert record["client"].startswith("127.0.0.1:")


def _access_record(server: ServerProcess, request_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the line is written just after the response
        for line in server.stderr().splitlines():
            if line.startswith("{") and f'"request_id": "{request_id}"' in line:
                record: dict[str, object] = json.loads(line)
                return record
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {request_id}")


def test_cors_is_off_by_default(http: httpx.Client) -> None:
    headers = {"Origin": "http://example.com", "Access-Control-Request-Method": "POST"}
    preflight = http.options("/v1/chat/completions", headers=headers)
    assert "access-control-allow-origin" not in preflight.headers
    plain = http.get("/v1/models", headers={"Origin": "http://example.com"})
    assert "access-control-allow-origin" not in plain.headers


def _wait_idle(http: httpx.Client) -> str:
    """Poll /metrics until nothing runs or waits and no KV block is held."""
    deadline = time.monotonic() + 30
    while True:
        text = http.get("/metrics").text
        busy = (
            metric(text, "ember:num_requests_running", **MODEL_LABEL)
            + metric(text, "ember:num_requests_waiting", **MODEL_LABEL)
            + metric(text, "ember:kv_cache_usage_perc", **MODEL_LABEL)
        )
        if busy == 0:
            return text
        assert time.monotonic() < deadline, "the engine never went idle"
        time.sleep(0.02)


def _aborted(text: str) -> float:
    return metric(text, "ember:request_success_total", finished_reason="abort", **MODEL_LABEL)


def test_a_stream_closed_by_its_client_is_aborted(
    http: httpx.Client, server: ServerProcess
) -> None:
    before = _aborted(_wait_idle(http))
    with (
        httpx.Client(base_url=server.url, timeout=60) as raw,
        raw.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as stream,
    ):
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk read: the request is running; now leave
    after = _wait_idle(http)
    assert _aborted(after) == before + 1


def test_a_non_streaming_client_that_leaves_is_aborted(
    http: httpx.Client, server: ServerProcess
) -> None:
    before = _aborted(_wait_idle(http))
    with (
        httpx.Client(base_url=server.url, timeout=0.3) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post("/v1/completions", json=LONG)
    after = _wait_idle(http)
    assert _aborted(after) == before + 1
    assert http.get("/health").status_code == 200
