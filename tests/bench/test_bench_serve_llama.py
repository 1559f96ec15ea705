"""`ember bench serve` against llama.cpp's real llama-server with SmolLM2 (skipped when
llama-server is not built): 4 requests at concurrency 2 all succeed and are measured."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ember.cli import main
from ember.envs import llama_bin, peer_environment
from tests.conftest import real_model_path

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = llama_bin() / "llama-server"
    if not exe.is_file():
        pytest.skip(f"llama-server is not built ({exe})")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        str(exe), "-m", str(real_model_path("smollm2")), "--host", "127.0.0.1",
        "--port", str(port), "-np", "2", "-c", "4096", "-t", "2", "--metrics",
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=peer_environment()
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama-server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail("llama-server did not become healthy within 120 s")


def test_four_requests_at_concurrency_two(
    llama_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "llama.json"
    argv = [
        "bench", "serve", "--base-url", f"{llama_server}/v1", "--num-requests", "4",
        "--concurrency", "2", "--max-tokens", "16", "--prompt-words", "16,64",
        "--output", str(output), "--no-progress",
    ]  # fmt: skip
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    [level] = json.loads(output.read_text())["levels"]
    assert level["completed"] == 4 and level["failed"] == 0, level["errors"]
    for request in level["requests"]:
        assert request["ttft_ms"] > 0 and request["e2e_ms"] >= request["ttft_ms"]
        assert 1 <= request["output_tokens"] <= 16
        assert request["prompt_tokens"] > 16
    assert level["ttft_ms"]["count"] == 4
    # llama-server's /metrics has cached and computed prompt-token counters.
    assert level["prefix_cache_hit_rate"] is not None
    assert "prefix cache hit" in captured.out
