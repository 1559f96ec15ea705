"""llama-bench-style throughput: pp (prefill) and tg (single-stream decode) tokens per second."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ember.models.loader import LoadedModel


@dataclass(frozen=True)
class SpeedResult:
    test: str  # "pp512", "tg128"
    tokens_per_second: float
    seconds: list[float]


def _ids(count: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count,), generator=generator)


def prefill_speed(loaded: LoadedModel, tokens: int = 512, repetitions: int = 3) -> SpeedResult:
    """Like llama-bench's pp test: one sequence of `tokens` processed in one batch."""
    model = loaded.model
    seconds = []
    for rep in range(repetitions + 1):
        ids = _ids(tokens, loaded.config.vocab_size, rep)
        cache = model.new_cache(tokens)
        started = time.perf_counter()
        hidden = model(ids, cache, 0)
        model.compute_logits(hidden[-1:])
        if rep:  # the first run warms up allocators and caches
            seconds.append(time.perf_counter() - started)
    return SpeedResult(f"pp{tokens}", tokens / (sum(seconds) / len(seconds)), seconds)


def decode_speed(loaded: LoadedModel, tokens: int = 128, repetitions: int = 2) -> SpeedResult:
    """Like llama-bench's tg test: `tokens` single-token steps from an empty context (greedy)."""
    model = loaded.model
    seconds = []
    for rep in range(repetitions + 1):
        cache = model.new_cache(tokens + 1)
        token = torch.tensor([1 + rep])
        steps = tokens if rep else 8
        started = time.perf_counter()
        for _ in range(steps):
            logits = model.compute_logits(model(token, cache, cache.length))
            token = logits[-1:].argmax(-1)
        if rep:
            seconds.append(time.perf_counter() - started)
    return SpeedResult(f"tg{tokens}", tokens / (sum(seconds) / len(seconds)), seconds)
