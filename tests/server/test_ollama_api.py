"""Ollama's API through the official client against a real `ember serve`."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

from tests.server.process import ServerProcess
from tests.server.sample_tools import ASK_WEATHER, TOOLS

pytestmark = pytest.mark.server

MODEL = "smol"
GREEDY = {"temperature": 0, "num_predict": 16}
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
TOOL_OPTIONS = {"temperature": 0, "num_predict": 96}
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
    # A first request fills the prefix cache, so the two compared below both reuse it and run
    # the same kernels: a cache hit and a miss may part ways at a near-tie of the small model
    # (--deterministic makes them agree; tests/server/test_batching.py).
    llama.generate(model=MODEL, prompt="Name a color.", options=GREEDY, stream=False)
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
    # A first request fills the prefix cache, so the two compared below both reuse it and run
    # the same kernels: a cache hit and a miss may part ways at a near-tie of the small model
    # (--deterministic makes them agree; tests/server/test_batching.py).
    llama.chat(model=MODEL, messages=CHAT, options=GREEDY, stream=False)
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


def _checked_calls(message: Any) -> list[tuple[str, dict[str, Any]]]:
    calls = []
    for call in message.tool_calls or []:
        arguments = dict(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        calls.append((call.function.name, arguments))
    return calls


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["required", "named"],
)
def test_forced_tool_calls_stream_the_same(http: httpx.Client, tool_choice: Any) -> None:
    # Ollama has no tool_choice (nor its client): Ember's extension, sent as raw JSON; the
    # answers are read with the client's own response model.
    body = {
        "model": MODEL,
        "messages": ASK_WEATHER,
        "tools": TOOLS,
        "tool_choice": tool_choice,
        "options": TOOL_OPTIONS,
    }
    response = http.post("/api/chat", json={**body, "stream": False})
    assert response.status_code == 200, response.text
    whole = ollama.ChatResponse.model_validate(response.json())
    assert whole.done and whole.done_reason == "stop"
    calls = _checked_calls(whole.message)
    assert len(calls) == 1 and not whole.message.content
    if isinstance(tool_choice, dict):
        assert calls[0][0] == "get_weather"
    streamed = http.post("/api/chat", json={**body, "stream": True})
    parts = [ollama.ChatResponse.model_validate_json(line) for line in streamed.text.splitlines()]
    assert parts[-1].done and parts[-1].done_reason == "stop"
    assert [c for part in parts for c in _checked_calls(part.message)] == calls
    assert "".join(part.message.content or "" for part in parts) == ""


def test_tool_result_round_trip_gives_text(llama: ollama.Client, http: httpx.Client) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    first = http.post(
        "/api/chat",
        json={
            "model": MODEL,
            "messages": ASK_WEATHER,
            "tools": TOOLS,
            "tool_choice": named,
            "options": TOOL_OPTIONS,
            "stream": False,
        },
    )
    message = ollama.ChatResponse.model_validate(first.json()).message
    assert message.tool_calls
    history: list[Any] = [
        *ASK_WEATHER,
        message,  # the client sends the assistant's tool_calls back as Ollama does
        {
            "role": "tool",
            "content": '{"temperature": 21, "sky": "clear"}',
            "tool_name": "get_weather",
        },
    ]
    answer = llama.chat(model=MODEL, messages=history, options=GREEDY, stream=False)
    assert answer.message.content and not answer.message.tool_calls
    assert answer.done_reason in ("stop", "length")
    none = http.post(
        "/api/chat",
        json={
            "model": MODEL,
            "messages": [*ASK_WEATHER, message.model_dump(exclude_none=True), history[-1]],
            "tools": TOOLS,
            "tool_choice": "none",
            "options": GREEDY,
            "stream": False,
        },
    ).json()
    assert none["message"]["content"] and "tool_calls" not in none["message"]


def test_auto_tools_through_the_client(llama: ollama.Client) -> None:
    # The client drops schema keywords it does not know (maxLength, additionalProperties):
    # the model may call a tool on its own, and then the call parses.
    response = llama.chat(
        model=MODEL, messages=ASK_WEATHER, tools=TOOLS, options=TOOL_OPTIONS, stream=False
    )
    assert response.done and response.done_reason in ("stop", "length")
    for call in response.message.tool_calls or []:
        assert call.function.name in SCHEMAS and isinstance(call.function.arguments, dict)
    if not response.message.tool_calls:
        assert response.message.content
    parts = list(
        llama.chat(
            model=MODEL, messages=ASK_WEATHER, tools=TOOLS, options=TOOL_OPTIONS, stream=True
        )
    )
    streamed = [c for part in parts for c in part.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in streamed] == [
        (c.function.name, dict(c.function.arguments)) for c in response.message.tool_calls or []
    ]
    assert "".join(p.message.content or "" for p in parts) == (response.message.content or "")


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
        ("/api/chat", {"model": MODEL, "messages": CHAT, "tools": TOOLS, "tool_choice": "maybe"}),
        ("/api/chat", {"model": MODEL, "messages": CHAT, "tool_choice": "required"}),
        ("/api/chat", {"model": MODEL, "messages": CHAT, "tools": [{"function": {}}]}),
        (
            "/api/chat",
            {
                "model": MODEL,
                "messages": CHAT,
                "tools": TOOLS,
                "tool_choice": "required",
                "format": "json",
            },
        ),
    ],
)
def test_malformed_requests_are_400(http: httpx.Client, path: str, body: object) -> None:
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["error"], str)
