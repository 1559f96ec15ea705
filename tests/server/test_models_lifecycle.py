"""Several models in one server: load on first use, LRU unload under --max-loaded-models,
keep_alive, and 404s for unknown models in every dialect."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.conftest import real_model_path
from tests.server.process import ServerProcess, smollm2

pytestmark = pytest.mark.server

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
GREEDY = {"temperature": 0, "num_predict": 3}


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    real_model_path("gemma3")  # downloaded (cached) before the server looks for it
    flags = ["--port", "0", "--threads", "1", "--max-model-len", "256", "--kv-cache-tokens", "512"]
    process = ServerProcess(
        [smollm2(), *flags, "--served-model-name", SMOL, "--max-loaded-models", "1"],
        tmp_path_factory.mktemp("multi"),
    )
    yield process
    assert process.terminate() == 0, process.stderr()[-3000:]


@pytest.fixture(scope="module")
def llama(multi: ServerProcess) -> ollama.Client:
    return ollama.Client(host=multi.url, timeout=120)


def _loaded(llama: ollama.Client) -> list[str]:
    return [m.model or "" for m in llama.ps().models]


def _wait_for(llama: ollama.Client, expected: list[str], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while _loaded(llama) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _loaded(llama) == expected


def test_second_model_loads_on_first_use_and_evicts_the_idle_one(llama: ollama.Client) -> None:
    assert _loaded(llama) == [f"{SMOL}:latest"]
    with ThreadPoolExecutor(2) as pool:  # both wait for one load
        results = list(
            pool.map(
                lambda _: llama.generate(model=GEMMA, prompt="The sky is", options=GREEDY),
                range(2),
            )
        )
    assert results[0].response == results[1].response
    assert all(r.done and r.model == GEMMA for r in results)
    assert _loaded(llama) == [f"{GEMMA}:latest"]  # --max-loaded-models 1: SmolLM2 went
    expires = llama.ps().models[0].expires_at
    assert expires is not None and expires > datetime.now(UTC)  # --keep-alive 5m by default


def test_default_model_reloads_for_openai_routes(
    multi: ServerProcess, llama: ollama.Client
) -> None:
    client = openai.OpenAI(base_url=f"{multi.url}/v1", api_key="x", max_retries=0, timeout=120)
    response = client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert response.choices[0].message.content is not None
    assert _loaded(llama) == [f"{SMOL}:latest"]
    # The request without a model goes to the model the server started with.
    without_model = httpx.post(
        f"{multi.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, timeout=60
    )
    assert without_model.status_code == 200 and without_model.json()["model"] == SMOL


def test_keep_alive_zero_unloads_and_a_duration_sets_expiry(llama: ollama.Client) -> None:
    llama.generate(model=SMOL, prompt="Hi", options=GREEDY, keep_alive="10m")
    expires = llama.ps().models[0].expires_at
    assert expires is not None
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 500 < left <= 600
    done = llama.generate(model=SMOL, prompt="Hi", options=GREEDY, keep_alive=0)
    assert done.done
    _wait_for(llama, [])
    # A request with no prompt loads the model; with keep_alive 0 it unloads it at once.
    assert llama.generate(model=SMOL, keep_alive=-1).done_reason == "load"
    assert _loaded(llama) == [f"{SMOL}:latest"]
    assert llama.ps().models[0].expires_at.year > 2100  # type: ignore[union-attr]
    assert llama.generate(model=SMOL, keep_alive=0).done_reason == "unload"
    assert _loaded(llama) == []


def test_unknown_models_are_404_in_every_dialect(
    multi: ServerProcess, llama: ollama.Client
) -> None:
    client = openai.OpenAI(base_url=f"{multi.url}/v1", api_key="x", max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
    claude = anthropic.Anthropic(base_url=multi.url, api_key="x", max_retries=0, timeout=60)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(
            model="claude-9", max_tokens=1, messages=[{"role": "user", "content": "Hi"}]
        )
    with pytest.raises(ollama.ResponseError) as caught:
        llama.chat(model="llama9", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as caught:  # a known tag that does not exist
        llama.generate(model=f"{GEMMA}:q8_0", prompt="x")
    assert caught.value.status_code == 404


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("30", 30.0), (0, 0.0), (12.5, 12.5)],
)
def test_keep_alive_durations(value: str | float, seconds: float) -> None:
    from ember.server.models import parse_keep_alive

    assert parse_keep_alive(value) == pytest.approx(seconds)


def test_keep_alive_negative_is_forever_and_garbage_is_a_400() -> None:
    from ember.server.errors import ApiError
    from ember.server.models import parse_keep_alive

    assert parse_keep_alive("-1m") is None and parse_keep_alive(-1) is None
    assert parse_keep_alive(None) is False  # not given: the model keeps its current setting
    for bad in ("soon", "5 m", "m", "1e999", True):
        with pytest.raises(ApiError) as caught:
            parse_keep_alive(bad)  # type: ignore[arg-type]
        assert caught.value.status == 400


def test_memory_budget_unloads_the_least_recently_used(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    real_model_path("gemma3")
    # SmolLM2 is about 0.1 GB of weights plus its KV pool, Gemma 3 270M about 0.25 GB: both
    # together do not fit in 0.3 GB.
    flags = ["--port", "0", "--threads", "1", "--max-model-len", "256", "--kv-cache-tokens", "512"]
    process = ServerProcess(
        [smollm2(), *flags, "--served-model-name", SMOL, "--memory-budget", "300000000"],
        tmp_path_factory.mktemp("budget"),
    )
    try:
        llama = ollama.Client(host=process.url, timeout=120)
        assert _loaded(llama) == [f"{SMOL}:latest"]
        time.sleep(0.6)  # past the idle grace period: SmolLM2 counts as idle
        assert llama.generate(model=GEMMA, prompt="Hi", options=GREEDY).done
        assert _loaded(llama) == [f"{GEMMA}:latest"]
    finally:
        assert process.terminate() == 0
