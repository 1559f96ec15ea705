"""Ollama's API through the official client against a real `ember serve`."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from tests.server.process import ServerProcess

pytestmark = pytest.mark.server

MODEL = "smol"
GREEDY = {"temperature": 0, "num_predict": 16}
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
TIMING_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@pytest.fixture(scope="module")
def llama(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def test_generate_stream_equals_whole_for_greedy(llama: ollama.Client) -> None:
    whole = llama.generate(model=MODEL, prompt="Name a color.", options=GREEDY, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.response
    for name in TIMING_FIELDS:
        value = getattr(whole, name)
        assert isinstance(value, int) and value >= 0, name
    assert whole.prompt_eval_count and whole.prompt_eval_count > 3
    assert whole.eval_count and 1 <= whole.eval_count <= 16
    parts = list(llama.generate(model=MODEL, prompt="Name a color.", options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].done_reason == whole.done_reason
    assert parts[-1].eval_count == whole.eval_count


def test_chat_stream_equals_whole_for_greedy(llama: ollama.Client) -> None:
    whole = llama.chat(model=MODEL, messages=CHAT, options=GREEDY, stream=False)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.done and whole.done_reason in ("stop", "length")
    parts = list(llama.chat(model=MODEL, messages=CHAT, options=GREEDY, stream=True))
    assert parts[-1].done and parts[-1].eval_count == whole.eval_count
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


def test_stream_is_ndjson(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Hi", "options": {"temperature": 0, "num_predict": 3}}
    response = http.post("/api/generate", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 3


def test_format_json_parses(llama: ollama.Client) -> None:
    response = llama.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat as a JSON object."}],
        format="json",
        options={"temperature": 0, "num_predict": 48},
        stream=False,
    )
    if response.done_reason == "stop":
        assert isinstance(json.loads(response.message.content or ""), dict)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    typed = llama.generate(
        model=MODEL,
        prompt="A person as JSON.",
        format=schema,
        options={"temperature": 0, "num_predict": 48},
        stream=False,
    )
    assert typed.done_reason == "stop"
    parsed = json.loads(typed.response)
    assert set(parsed) == {"name", "age"} and isinstance(parsed["age"], int)


def test_models_endpoints(llama: ollama.Client) -> None:
    names = [m.model for m in llama.list().models]
    assert "smollm2-135m-instruct:latest" in names
    shown = llama.show("smollm2-135m-instruct")
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.template and "im_start" in shown.template
    running = llama.ps().models
    assert running and running[0].size and running[0].expires_at is not None
    version = httpx.get(f"{llama._client.base_url}/api/version").json()["version"]
    assert isinstance(version, str) and version


def test_pull_of_a_downloaded_model_streams_progress(llama: ollama.Client) -> None:
    statuses = [p.status for p in llama.pull("smollm2-135m-instruct", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert llama.pull("smollm2-135m-instruct").status == "success"
    with pytest.raises(ollama.ResponseError) as caught:
        llama.pull("no-such-model")
    assert caught.value.status_code == 404


def test_embed(llama: ollama.Client) -> None:
    response = llama.embed(model=MODEL, input=["hello", "world"])
    assert len(response.embeddings) == 2 and len(response.embeddings[0]) == 576
    legacy = llama.embeddings(model=MODEL, prompt="hello")
    assert list(legacy.embedding) == pytest.approx(response.embeddings[0], abs=1e-5)


def test_unknown_model_is_a_404(llama: ollama.Client) -> None:
    for call in (
        lambda: llama.generate(model="llama9", prompt="x"),
        lambda: llama.chat(model="llama9", messages=CHAT),
        lambda: llama.show("llama9"),
    ):
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 404 and "llama9" in caught.value.error


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"prompt": "x"}),
        ("/api/generate", {"model": MODEL, "prompt": "x", "images": ["aGk="]}),
        ("/api/generate", {"model": MODEL, "prompt": "x", "format": "xml"}),
        ("/api/generate", {"model": MODEL, "prompt": "x", "options": {"temperature": "hot"}}),
        ("/api/generate", {"model": MODEL, "prompt": "x", "options": {"num_predict": 0}}),
        ("/api/generate", {"model": MODEL, "prompt": "x", "keep_alive": "soon"}),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "images": ["aGk="]}]}),
        ("/api/chat", {"model": MODEL, "messages": "hi"}),
        ("/api/embed", {"model": MODEL, "input": 5}),
        ("/api/show", {}),
        ("/api/pull", {}),
        ("/api/generate", [1, 2]),
    ],
)
def test_malformed_requests_are_400(http: httpx.Client, path: str, body: object) -> None:
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["error"], str)
