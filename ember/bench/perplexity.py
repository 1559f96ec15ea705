"""Perplexity computed exactly as llama.cpp's llama-perplexity does it.

Tokenize the whole text (BOS first where the model adds one), cut it into whole chunks of
n_ctx tokens (a remainder is dropped), put BOS over the first token of each chunk where the
model adds one, run each chunk as its own sequence, and score only the second half: the
negative log-likelihood of tokens first+1 .. n_ctx-1 from positions first .. n_ctx-2, with
first = n_ctx // 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ember.errors import RequestError
from ember.models.loader import LoadedModel


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    chunks: int
    tokens_scored: int
    chunk_perplexities: list[float]
    """Running estimate after each chunk, as llama.cpp prints it ([1]x,[2]y,...)."""


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer.encode("a", add_special=True)[:1] == [bos]


def perplexity(
    loaded: LoadedModel,
    text: str,
    n_ctx: int = 512,
    max_chunks: int | None = None,
    on_chunk: Callable[[int, int, float], None] | None = None,
) -> PerplexityResult:
    tokenizer = loaded.tokenizer
    if n_ctx < 16:
        raise RequestError(f"context size must be at least 16 tokens, got {n_ctx}")
    if n_ctx > loaded.config.context_length:
        raise RequestError(
            f"context size {n_ctx} exceeds the model's context length "
            f"{loaded.config.context_length}"
        )
    tokens = tokenizer.encode(text, add_special=True, parse_special=False)
    total_chunks = len(tokens) // n_ctx
    if max_chunks is not None:
        total_chunks = min(total_chunks, max_chunks)
    if total_chunks == 0:
        raise RequestError(
            f"the text has {len(tokens)} tokens: perplexity needs at least {n_ctx} (one chunk)"
        )
    add_bos = _adds_bos(tokenizer)
    first = n_ctx // 2
    nll_sum, count, running = 0.0, 0, []
    for index in range(total_chunks):
        chunk = tokens[index * n_ctx : (index + 1) * n_ctx]
        if add_bos:
            chunk[0] = tokenizer.bos_token_id
        ids = torch.tensor(chunk, dtype=torch.long)
        cache = loaded.model.new_cache(n_ctx)
        hidden = loaded.model.prefill(ids, cache)
        logits = loaded.model.compute_logits(hidden[first : n_ctx - 1])
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        targets = ids[first + 1 : n_ctx]
        nll_sum -= float(logprobs.gather(1, targets[:, None]).sum())
        count += len(targets)
        running.append(math.exp(nll_sum / count))
        if on_chunk is not None:
            on_chunk(index + 1, total_chunks, running[-1])
    return PerplexityResult(math.exp(nll_sum / count), total_chunks, count, running)
