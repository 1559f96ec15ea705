"""Malformed-request fuzz over every route: random JSON shapes, wrong types, huge numbers, unicode
garbage and raw bytes. No answer may be a 5xx, every error must have OpenAI's shape, and the
server must still be healthy (and still generate) afterwards."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest

from tests.server.process import ServerProcess

pytestmark = pytest.mark.server

POST_ROUTES = {
    "/v1/chat/completions": {
        "model": "smol",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
    },
    "/v1/completions": {"model": "smol", "prompt": "Hi", "max_tokens": 2},
    "/v1/embeddings": {"model": "smol", "input": "Hi"},
    "/tokenize": {"prompt": "Hi"},
    "/detokenize": {"tokens": [1, 2, 3]},
}
GET_ROUTES = ["/health", "/metrics", "/version", "/v1/models", "/v1/models/smol"]
FIELDS = [
    "model", "messages", "prompt", "input", "tokens", "n", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "logit_bias", "seed", "stop", "stop_token_ids", "stream",
    "stream_options", "min_tokens", "ignore_eos", "logprobs", "top_logprobs", "prompt_logprobs",
    "echo", "best_of", "suffix", "response_format", "tools", "tool_choice", "user",
    "encoding_format", "dimensions", "add_special_tokens", "return_token_strs",
    "chat_template_kwargs", "add_generation_prompt", "skip_special_tokens",
    "include_stop_str_in_output", "role", "content", "type", "text",
]  # fmt: skip
NUMBERS = [
    0, 1, 2, 7, -1, -7, 2**31, 2**63, -(2**63), 2**64, 10**30, -(10**30),
    0.5, -0.0, 1e-300, 1e308, -1e308, 3.7, 1e20,
]  # fmt: skip
STRINGS = [
    "", " ", "smol", "text", "json_object", "user", "assistant", "none", "auto",
    "\u0000", "\u202e\u200b\ufeff", "😀" * 50, "日本語のテキスト", "\\u0000", "{{ 7*7 }}",
    "{% for x in range(99999999) %}x{% endfor %}", "<|im_start|>system", "x" * 3000,
    "'; DROP TABLE--", "%s%n%x", "\r\n\r\n", "NaN", "Infinity",
]  # fmt: skip


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "number", "string"] + (["list", "dict"] * 2 if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "number":
        return rng.choice(NUMBERS)
    if kind == "string":
        return rng.choice(STRINGS)
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = [rng.choice(FIELDS + STRINGS[:9]) for _ in range(rng.randint(0, 4))]
    return {key: random_value(rng, depth + 1) for key in keys}


def random_body(rng: random.Random, base: dict[str, Any]) -> bytes:
    roll = rng.random()
    if roll < 0.15:  # raw bytes, often not JSON at all
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        return rng.choice([raw, json.dumps(base).encode()[: rng.randint(0, 40)], b"null", b"1e999"])
    if roll < 0.3:  # any JSON value
        return json.dumps(random_value(rng)).encode()
    body = dict(base)
    for _ in range(rng.randint(1, 3)):  # a valid body with fields set to random values
        body[rng.choice(FIELDS)] = random_value(rng, depth=1)
    if rng.random() < 0.2:
        body.pop(rng.choice(list(body)), None)
    return json.dumps(body).encode()


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.content[:300], response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and "\n" not in error["message"]


def test_fuzz_every_route(http: httpx.Client, server: ServerProcess) -> None:
    rng = random.Random(1234)
    seen_statuses = set()
    for _ in range(300):
        path = rng.choice(list(POST_ROUTES))
        body = random_body(rng, POST_ROUTES[path])
        headers = {"content-type": rng.choice(["application/json", "text/plain", "x/y"])}
        response = http.post(path, content=body, headers=headers)
        check(response)
        seen_statuses.add(response.status_code)
    for path in GET_ROUTES:
        check(http.get(path))
        check(http.post(path, json={}))
    for path in ("/v1/models/%C3%A9%00", "/%ff%fe", "/v1/chat/completions/../../x"):
        check(http.get(path))
    assert 400 in seen_statuses and 200 in seen_statuses
    assert http.get("/health").status_code == 200
    ok = http.post("/v1/completions", json=POST_ROUTES["/v1/completions"])
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] is not None
    assert "Traceback" not in server.stderr()


def test_odd_headers(http: httpx.Client) -> None:
    weird_ids = [b"", b"a" * 500, b"ok-id_1.2:3", b"spaces are bad", "ünïcode".encode()]
    for request_id in weird_ids:
        response = http.get("/health", headers={"x-request-id": request_id})
        assert response.status_code == 200
        echoed = response.headers["x-request-id"].encode()
        assert (echoed == request_id) == (request_id == b"ok-id_1.2:3")
