"""What a finished (or streaming) request returns, in vLLM's shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ember.sample.logprobs import PositionLogprobs


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token's log-probability at one position, as vLLM's Logprob."""

    logprob: float
    rank: int
    decoded_token: str


# Per position: token id -> its logprob; holds the actual token plus the top-N alternatives.
PositionLogprobDict = dict[int, TokenLogprob]


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list[PositionLogprobDict] | None = None
    finish_reason: str | None = None
    """"stop" (EOS, stop token or stop string), "length" (max_tokens or context), or None."""
    stop_reason: str | int | None = None
    """The stop string or stop token id that ended generation (None for EOS or length)."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt_logprobs: list[PositionLogprobDict | None] | None = None
    finished: bool = False
    num_cached_tokens: int = 0
    """Prompt tokens whose KV came from the prefix cache."""


def logprob_dict(result: PositionLogprobs, tokenizer: Any) -> PositionLogprobDict:
    """vLLM's per-position dict: the chosen token and the top alternatives, each decoded alone
    (empty text without a tokenizer)."""

    def piece(token_id: int) -> str:
        return tokenizer.decode([token_id]) if tokenizer is not None else ""

    entries = {
        item.token_id: TokenLogprob(item.logprob, item.rank, piece(item.token_id))
        for item in result.top
    }
    chosen = result.chosen
    entries.setdefault(
        chosen.token_id, TokenLogprob(chosen.logprob, chosen.rank, piece(chosen.token_id))
    )
    return entries
