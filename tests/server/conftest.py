"""Fixtures: one shared `ember serve` (the real default model, small limits) for the session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.server.process import ServerProcess, smollm2

SERVER_FLAGS = [
    "--port",
    "0",
    "--threads",
    "1",
    "--max-model-len",
    "512",
    "--kv-cache-tokens",
    "4096",
    "--max-num-seqs",
    "8",
    "--served-model-name",
    "smol",
    "smollm2-135m-instruct",
    "--max-n",
    "4",
    "--max-stop",
    "4",
    "--max-logit-bias",
    "8",
    "--max-prompts",
    "4",
    "--max-tokens-limit",
    "128",
    "--max-request-bytes",
    "65536",
]
"""The shared server: the real default model, a small context and small caps (so limits are
cheap to reach). One thread: the machine's two cores are shared with the test process and
others, and two OpenMP threads that wait on each other suffer most from that."""


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess([smollm2(), *SERVER_FLAGS], tmp_path_factory.mktemp("serve"))
    yield process
    code = process.terminate()
    assert code == 0, process.stderr()[-3000:]


@pytest.fixture(scope="session")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> object:
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
