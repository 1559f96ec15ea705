"""Log-probability results: the chosen token's logprob and rank, plus the top-N alternatives.

Conventions are vLLM's (which follow OpenAI's): rank is 1-based and counts the tokens whose
logprob is >= the chosen token's, so the argmax has rank 1 and a token tied with others gets the
worst rank of its tie; the top-N list is ranked 1..N, best first; a request asking for N
alternatives gets N entries plus the chosen token, which may or may not be among them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class Logprob:
    """One token's log-probability at one position (decoding to text is the engine's job)."""

    token_id: int
    logprob: float
    rank: int
    """1-based position of the token when the vocabulary is sorted by logprob, best first."""


@dataclass(frozen=True, slots=True)
class PositionLogprobs:
    """Logprobs at one position: the token actually there and the most likely alternatives."""

    chosen: Logprob
    top: tuple[Logprob, ...]
    """The N most likely tokens, best first (N as requested, possibly 0)."""


def gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_top: Sequence[int]
) -> list[PositionLogprobs]:
    """Per row of logprobs [R, V]: the logprob and rank of token_ids [R], and num_top[r] best.

    One topk over the largest N for all rows, one host transfer at the end.
    """
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))  # [R, 1]
    ranks = (logprobs >= chosen).sum(dim=-1)
    max_top = max(num_top, default=0)
    if max_top > 0:
        top_values, top_ids = logprobs.topk(max_top, dim=-1)
        top_values_list, top_ids_list = top_values.tolist(), top_ids.tolist()
    else:
        top_values_list = top_ids_list = [[] for _ in num_top]
    results = []
    for row, (token, value, rank) in enumerate(
        zip(token_ids.tolist(), chosen.squeeze(1).tolist(), ranks.tolist(), strict=True)
    ):
        top = tuple(
            Logprob(token_id=tid, logprob=lp, rank=place + 1)
            for place, (tid, lp) in enumerate(
                zip(top_ids_list[row][: num_top[row]], top_values_list[row], strict=False)
            )
        )
        results.append(PositionLogprobs(Logprob(token, value, rank), top))
    return results


def score_tokens(
    logits: torch.Tensor, target_ids: Sequence[int], num_top: int
) -> list[PositionLogprobs]:
    """Row i of logits [N, V] scores target_ids[i]: the building block of prompt logprobs.

    Uses the model's raw logits (no penalties, no temperature), as vLLM does for prompt logprobs.
    A chunked prefill can call this per chunk with the chunk's rows and the tokens that follow.
    """
    if logits.dim() != 2 or logits.shape[0] != len(target_ids):
        raise ValueError(
            f"score_tokens needs one logits row per target, got {tuple(logits.shape)} "
            f"for {len(target_ids)} targets"
        )
    if not target_ids:
        return []
    logprobs = torch.log_softmax(logits.to(torch.float32), dim=-1)
    targets = torch.as_tensor(list(target_ids), dtype=torch.int64)
    return gather_logprobs(logprobs, targets, [num_top] * len(target_ids))


def prompt_logprobs(
    logits: torch.Tensor, token_ids: Sequence[int], num_top: int
) -> list[PositionLogprobs | None]:
    """Logprobs of every prompt token given the ones before it, vLLM-style.

    logits [T, V] are the model's outputs at the T prompt positions (row t predicts token t+1).
    The result has T entries; the first is None because nothing predicts the first token, and the
    last logits row, which predicts the first generated token, is not used.
    """
    if logits.dim() != 2 or logits.shape[0] != len(token_ids):
        raise ValueError(
            f"prompt_logprobs needs one logits row per prompt token, got {tuple(logits.shape)} "
            f"for {len(token_ids)} tokens"
        )
    if not token_ids:
        return []
    scored = score_tokens(logits[:-1], token_ids[1:], num_top)
    return [None, *scored]
