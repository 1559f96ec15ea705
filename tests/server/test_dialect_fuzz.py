"""Malformed-request fuzz over the Anthropic and Ollama routes: wrong types and shapes in every
field. No answer may be a 5xx, every error has its dialect's shape, and the server stays up."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.server

ROUTES: dict[str, dict[str, Any]] = {
    "/v1/messages": {
        "model": "smol",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "Hi"}],
        "system": "Be brief.",
        "stop_sequences": ["x"],
    },
    "/v1/messages/count_tokens": {"model": "smol", "messages": [{"role": "user", "content": "Hi"}]},
    "/api/generate": {"model": "smol", "prompt": "Hi", "options": {"num_predict": 2}},
    "/api/chat": {
        "model": "smol",
        "messages": [{"role": "user", "content": "Hi"}],
        "options": {"num_predict": 2},
        "stream": False,
    },
    "/api/embed": {"model": "smol", "input": "Hi"},
    "/api/show": {"model": "smol"},
}
GARBAGE: list[Any] = [
    None, -1, 0, 2**63, 1e308, -0.5, "", "x" * 300, [], [None], {}, {"a": 1}, True,
    [{"role": "user"}], [{"type": "image"}], {"num_predict": "2"}, {"stop": 5}, "json",
]  # fmt: skip


def _mutations(seed: int, count: int) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    out: list[tuple[str, Any]] = []
    for _ in range(count):
        path = rng.choice(list(ROUTES))
        body = dict(ROUTES[path])
        # not keep_alive: 0 would unload the shared server's model under the other tests
        field = rng.choice([*body, "format", "tools", "temperature", "top_k"])
        body[field] = rng.choice(GARBAGE)
        if field in ("max_tokens",) and isinstance(body[field], int) and body[field] > 8:
            body[field] = 2**63  # never a long generation: past the server's limit
        out.append((path, body))
    return out


def test_fuzz_never_5xx(http: httpx.Client) -> None:
    for path, body in _mutations(seed=5, count=80):
        response = http.post(path, json=body)
        assert response.status_code < 500, (path, body, response.text)
        if response.status_code >= 400:
            payload = response.json()
            if path.startswith("/v1/messages"):
                assert payload["type"] == "error" and payload["error"]["message"]
            else:
                assert isinstance(payload["error"], str)
    lone_surrogate = b'{"model": "smol", "prompt": "\\ud800", "options": {"num_predict": 1}}'
    for raw in (b"{", b"\xff\xfe", b"[1,2]", b"null", lone_surrogate):
        for path in ROUTES:
            response = http.post(path, content=raw, headers={"content-type": "application/json"})
            assert response.status_code < 500, (path, raw, response.text)
    assert http.get("/health").status_code == 200
    assert http.post("/api/generate", json=ROUTES["/api/generate"]).status_code == 200
