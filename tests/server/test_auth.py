"""--api-key, CORS when configured, and `ember serve`'s one-line refusals of bad flags."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.server.process import ServerProcess, smollm2

pytestmark = pytest.mark.server

KEY = "s3cret-key"
ORIGIN = "http://chat.example"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    flags = ["--port", "0", "--threads", "1", "--max-model-len", "256", "--kv-cache-tokens", "1024"]
    process = ServerProcess(
        [smollm2(), *flags, "--allowed-origins", ORIGIN, "--served-model-name", "guarded"],
        tmp_path_factory.mktemp("secured"),
        env={"EMBER_API_KEY": KEY},  # the key through the environment variable
    )
    yield process
    assert process.terminate() == 0


def test_routes_need_the_key(secured: ServerProcess) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    with httpx.Client(base_url=secured.url, timeout=60) as http:
        for method, path, body in [
            ("POST", "/v1/chat/completions", chat),
            ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
            ("GET", "/v1/models", None),
            ("POST", "/v1/embeddings", {"input": "Hi"}),
            ("POST", "/tokenize", {"prompt": "Hi"}),
        ]:
            missing = http.request(method, path, json=body)
            assert missing.status_code == 401, path
            assert missing.json()["error"]["code"] == "invalid_api_key"
            assert "missing API key" in missing.json()["error"]["message"]
            wrong = http.request(method, path, json=body, headers={"Authorization": "Bearer no"})
            assert wrong.status_code == 401 and "incorrect" in wrong.json()["error"]["message"]
            good = http.request(method, path, json=body, headers={"Authorization": f"Bearer {KEY}"})
            assert good.status_code == 200, good.text
        assert http.post("/tokenize", json={"prompt": "x"}, headers={"x-api-key": KEY}).is_success
        # Probes and scrapers need no key.
        assert http.get("/health").status_code == 200
        assert http.get("/metrics").status_code == 200


def test_official_client_with_and_without_the_key(secured: ServerProcess) -> None:
    good = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in good.models.list().data][0] == "guarded"  # then library models
    bad = openai.OpenAI(base_url=f"{secured.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_cors_when_origins_are_given(secured: ServerProcess) -> None:
    preflight_headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    with httpx.Client(base_url=secured.url, timeout=60) as http:
        preflight = http.options("/v1/chat/completions", headers=preflight_headers)
        assert preflight.status_code == 200  # no key needed for a preflight
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        other = http.options(
            "/v1/chat/completions", headers={**preflight_headers, "Origin": "http://evil.example"}
        )
        assert other.headers.get("access-control-allow-origin") != "http://evil.example"
        answer = http.get(
            "/v1/models", headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"}
        )
        assert answer.headers["access-control-allow-origin"] == ORIGIN


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--host", "0.0.0.0"], ["--api-key", "EMBER_API_KEY"]),
        (["--host", "10.1.2.3", "--port", "0"], ["--api-key"]),
        (["--port", "70000"], ["port must be in 0..65535"]),
        (["--max-n", "0"], ["max_n must be positive"]),
        (["--max-num-seqs", "0"], ["max_num_seqs must be positive"]),
        (["--shutdown-timeout", "-1"], ["shutdown timeout"]),
        (["no-such-model-anywhere"], ["unknown model"]),
        (["/nonexistent/model.gguf"], ["no such model file"]),
    ],
)
def test_bad_flags_are_one_line_errors(args: list[str], words: list[str]) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "EMBER_API_KEY"}
    result = _serve(*args, env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _serve(smollm2(), "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_refusals_come_in_each_dialects_error_shape(secured: ServerProcess) -> None:
    with httpx.Client(base_url=secured.url, timeout=60) as http:
        anthropic_style = http.post("/v1/messages", json={"max_tokens": 1, "messages": []})
        assert anthropic_style.status_code == 401
        body = anthropic_style.json()
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
        ollama_style = http.post("/api/chat", json={"model": "x", "messages": []})
        assert ollama_style.status_code == 401 and isinstance(ollama_style.json()["error"], str)
        openai_style = http.post("/v1/chat/completions", json={})
        assert openai_style.status_code == 401 and "message" in openai_style.json()["error"]
