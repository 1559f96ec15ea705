"""Greedy output does not depend on what else is in the batch (a --deterministic server), and
concurrent streams never mix: each request gets exactly its own tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.server.process import ServerProcess, smollm2

pytestmark = pytest.mark.server

PROMPTS = [
    "The quick brown fox",
    "List three fruits:",
    "def fibonacci(n):",
    "Water boils at",
    "In 1492, Columbus",
    "The best way to learn a language is",
]


@pytest.fixture(scope="module")
def deterministic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    flags = ["--port", "0", "--threads", "1", "--max-model-len", "256", "--kv-cache-tokens", "4096"]
    process = ServerProcess(
        [smollm2(), *flags, "--deterministic", "--served-model-name", "smol"],
        tmp_path_factory.mktemp("deterministic"),
    )
    yield process
    assert process.terminate() == 0


async def _complete(client: openai.AsyncOpenAI, prompt: str, tokens: int, stream: bool) -> str:
    options: dict[str, Any] = {
        "model": "smol",
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    if not stream:
        return (await client.completions.create(**options)).choices[0].text
    pieces = []
    async for chunk in await client.completions.create(stream=True, **options):
        pieces.extend(choice.text for choice in chunk.choices)
    return "".join(pieces)


def test_greedy_output_is_the_same_alone_and_in_any_batch(deterministic: ServerProcess) -> None:
    lengths = [12, 20, 8, 16, 24, 10]

    async def main() -> tuple[list[str], list[str]]:
        async with openai.AsyncOpenAI(
            base_url=f"{deterministic.url}/v1", api_key="x", max_retries=0, timeout=120
        ) as client:
            alone = [
                await _complete(client, p, n, stream=False)
                for p, n in zip(PROMPTS, lengths, strict=True)
            ]
            together = await asyncio.gather(
                *(
                    _complete(client, p, n, stream=i % 2 == 0)
                    for i, (p, n) in enumerate(zip(PROMPTS, lengths, strict=True))
                )
            )
            return alone, list(together)

    alone, together = asyncio.run(main())
    assert all(alone)
    assert together == alone
