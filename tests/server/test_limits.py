"""Bad requests and caps: every one a 4xx in OpenAI's error shape with a one-line message."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.server

CHAT = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"model": "smol", "prompt": "Hi", "max_tokens": 2}


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    message = error["message"]
    assert isinstance(message, str) and message and "\n" not in message
    assert "Traceback" not in message
    for word in words:
        assert word in message, message
    return error


@pytest.mark.parametrize(
    ("change", "words", "param"),
    [
        ({"n": 5, "temperature": 1}, ["n must be in [1, 4]"], "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, ["stop has 5", "at most 4"], "stop"),
        ({"logit_bias": {str(i): 1 for i in range(9)}}, ["logit_bias has 9"], "logit_bias"),
        ({"max_tokens": 129}, ["max_tokens is 129", "at most 128"], "max_tokens"),
        ({"max_completion_tokens": 500}, ["at most 128"], "max_tokens"),
        ({"logprobs": True, "top_logprobs": 21}, ["top_logprobs must be in [0, 20]"], None),
        ({"top_logprobs": 2}, ["needs logprobs"], "top_logprobs"),
        ({"temperature": -1}, ["temperature must be >= 0"], "temperature"),
        ({"top_p": 0}, ["top_p"], "top_p"),
        ({"n": 2, "temperature": 0}, ["n must be 1 when sampling greedily"], "n"),
        ({"seed": 2**70}, ["seed"], "seed"),
        ({"stop": [""]}, ["stop"], "stop"),
        ({"logit_bias": {"abc": 1}}, ["logit_bias keys must be token ids"], "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, ["logit_bias", "vocab"], None),
        ({"stop_token_ids": [10**12]}, ["stop_token_ids"], None),
        ({"temperature": "hot"}, ["temperature", "valid number"], "temperature"),
        ({"max_tokens": 1.5}, ["max_tokens"], "max_tokens"),
        ({"stream": "yes"}, ["stream"], "stream"),
        ({"messages": []}, ["messages"], "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, ["messages.0.role"], None),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            ["'image_url' are not supported"],
            "messages.0.content.0",
        ),
        ({"response_format": {"type": "yaml"}}, ["response_format.type"], None),
    ],
)
def test_chat_request_checks(
    http: httpx.Client, change: dict[str, Any], words: list[str], param: str | None
) -> None:
    error = assert_error(http.post("/v1/chat/completions", json={**CHAT, **change}), 400, *words)
    if param is not None:
        assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_prompt_plus_max_tokens_beyond_the_context_names_both_numbers(http: httpx.Client) -> None:
    long_prompt = " ".join(["word"] * 450)
    count = http.post("/tokenize", json={"prompt": long_prompt}).json()["count"]
    body = {**COMPLETION, "prompt": long_prompt, "max_tokens": 100}
    assert_error(http.post("/v1/completions", json=body), 400, str(count), "100", "512")
    too_long = {**COMPLETION, "prompt": " ".join(["word"] * 600)}
    assert_error(http.post("/v1/completions", json=too_long), 400, "512")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"prompt": []}, ["prompt is empty"]),
        ({"prompt": [[]]}, ["empty"]),
        ({"prompt": [-5]}, ["outside the vocabulary"]),
        ({"prompt": [10**9]}, ["outside the vocabulary"]),
        ({"prompt": ["a"] * 5}, ["at most 4"]),
        ({"prompt": 5}, ["prompt"]),
        ({"prompt": [1, "a"]}, ["prompt"]),
        ({"logprobs": 21}, ["logprobs must be in [0, 20]"]),
        ({"suffix": "x"}, ["suffix"]),
        ({"best_of": 3}, ["best_of"]),
    ],
)
def test_completion_request_checks(
    http: httpx.Client, change: dict[str, Any], words: list[str]
) -> None:
    assert_error(http.post("/v1/completions", json={**COMPLETION, **change}), 400, *words)


def test_malformed_bodies_are_400(http: httpx.Client) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize"):
        assert_error(http.post(path, content=b"{not json"), 400, "not valid JSON")
        assert_error(http.post(path, content=b""), 400, "empty")
        assert_error(http.post(path, content=b"[1, 2]"), 400)
        assert_error(http.post(path, content=b"\xff\xfe\x00garbage"), 400)
        assert_error(http.post(path, content=b"[" * 5000 + b"]" * 5000), 400)


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * 70000}]}
    assert_error(http.post("/v1/chat/completions", json=huge), 413, "65536")

    def chunks() -> Any:  # no Content-Length: the limit applies to the bytes read
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"y" * 4096
        yield b'"}'

    assert_error(http.post("/v1/completions", content=chunks()), 413)


def test_unknown_routes_and_methods_use_the_error_shape(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing"), 404, "/v1/nothing")
    assert_error(http.get("/v1/chat/completions"), 405)
    assert_error(http.post("/v1/chat/completions", json={**CHAT, "model": "nope"}), 404, "nope")


def test_unknown_fields_are_ignored(http: httpx.Client) -> None:
    body = {**CHAT, "store": True, "metadata": {"a": "b"}, "service_tier": "auto"}
    assert http.post("/v1/chat/completions", json=body).status_code == 200


def test_headers_over_the_limit_are_431(http: httpx.Client) -> None:
    response = http.get("/v1/models", headers={"X-Padding": "a" * 20000})
    assert_error(response, 431, "16384")
    assert http.get("/v1/models", headers={"X-Padding": "a" * 1000}).status_code == 200
