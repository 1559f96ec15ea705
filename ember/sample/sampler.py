"""The batched sampler: logits [B, V] for B requests -> one token (and optional logprobs) each.

Order of operations is vLLM v1's:

0. (before the sampler, in the model runner) structured outputs: tokens the request's grammar
   does not allow are already -inf, so even raw logprobs reflect the grammar, as in vLLM;
1. raw logprobs, if requested and logprobs_mode is "raw_logprobs" (vLLM's default): the
   log-softmax of the model's logits before anything below touches them;
2. min_tokens (EOS and stop token ids set to -inf) and logit_bias (added);
3. penalties: repetition over prompt+output, then frequency and presence over output;
4. greedy rows: argmax of the penalised logits (ties -> lowest id, no RNG involved);
5. other rows: divide by temperature, min_p, top_k, then top_p, then draw one token.

With logprobs_mode "processed_logprobs" the logprobs are instead those of the distribution the
token was drawn from: after step 5's truncation for sampled rows, after step 3 for greedy rows.
Note that vLLM v1 applies min_p before top_k/top_p (vLLM v0 applied it after); the order matters
only when min_p and top_p are both set, because top_p then sees the min_p-renormalised mass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ember.sample.logprobs import PositionLogprobs, gather_logprobs
from ember.sample.ops import (
    apply_penalties,
    exponential_race,
    min_p_remove_mask,
    top_k_top_p_remove_mask,
)
from ember.sample.state import RequestSamplingState

LogprobsMode = Literal["raw_logprobs", "processed_logprobs"]


@dataclass(frozen=True, slots=True)
class SamplerOutput:
    """One step's result, row i for states[i]."""

    token_ids: list[int]
    logprobs: list[PositionLogprobs | None]
    """None for rows whose request did not ask for logprobs."""


class Sampler:
    """Samples one token per row. Stateless apart from the generator shared by unseeded rows."""

    def __init__(
        self,
        logprobs_mode: LogprobsMode = "raw_logprobs",
        generator: torch.Generator | None = None,
    ) -> None:
        if logprobs_mode not in ("raw_logprobs", "processed_logprobs"):
            raise ValueError(
                f"logprobs_mode must be raw_logprobs or processed_logprobs, got {logprobs_mode!r}"
            )
        self.logprobs_mode = logprobs_mode
        # None: torch's default generator, so torch.manual_seed makes unseeded rows reproducible
        self.generator = generator

    def sample(self, logits: torch.Tensor, states: Sequence[RequestSamplingState]) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != len(states):
            raise ValueError(
                f"sampler needs logits [B, V] with one row per request, got "
                f"{tuple(logits.shape)} for {len(states)} requests"
            )
        batch = logits.shape[0]
        logprob_rows = [i for i, s in enumerate(states) if s.params.logprobs is not None]
        row_logprobs = None  # [len(logprob_rows), V]
        if logprob_rows and self.logprobs_mode == "raw_logprobs":
            row_logprobs = torch.log_softmax(_rows(logits, logprob_rows).float(), dim=-1)

        if (
            logits.dtype == torch.float32
            and not logprob_rows
            and all(_plain_greedy(s) for s in states)
        ):
            # Nothing below would change the logits: argmax them as they are, without a copy.
            return SamplerOutput(logits.argmax(dim=-1).tolist(), [None] * batch)
        # our own float32 copy: the caller's logits stay untouched
        logits = logits.to(torch.float32, copy=True)
        _apply_min_tokens(logits, states)
        _apply_logit_bias(logits, states)
        _apply_penalties(logits, states)

        greedy_rows = [i for i, s in enumerate(states) if s.params.is_greedy]
        random_rows = [i for i, s in enumerate(states) if not s.params.is_greedy]
        sampled = torch.empty(batch, dtype=torch.int64)
        processed = logits  # what "processed_logprobs" reads: truncated for random rows below
        if greedy_rows:
            sampled[greedy_rows] = _rows(logits, greedy_rows).argmax(dim=-1)
        if random_rows:
            truncated = self._truncate(_rows(logits, random_rows), [states[i] for i in random_rows])
            generators = [states[i].generator for i in random_rows]
            drawn = exponential_race(truncated.softmax(dim=-1), generators, self.generator)
            sampled[random_rows] = drawn
            if logprob_rows and self.logprobs_mode == "processed_logprobs":
                processed = logits.clone() if greedy_rows else truncated
                if greedy_rows:
                    processed[random_rows] = truncated

        logprobs: list[PositionLogprobs | None] = [None] * batch
        if logprob_rows:
            if row_logprobs is None:
                row_logprobs = torch.log_softmax(_rows(processed, logprob_rows), dim=-1)
            num_top = [int(states[i].params.logprobs or 0) for i in logprob_rows]
            gathered = gather_logprobs(row_logprobs, sampled[logprob_rows], num_top)
            for row, result in zip(logprob_rows, gathered, strict=True):
                logprobs[row] = result
        return SamplerOutput(token_ids=sampled.tolist(), logprobs=logprobs)

    @staticmethod
    def _truncate(logits: torch.Tensor, states: Sequence[RequestSamplingState]) -> torch.Tensor:
        """Temperature, then min_p, top_k, top_p, as -inf in a copy of logits [R, V]."""
        params = [s.params for s in states]
        temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32)
        logits = logits / temperature.unsqueeze(1)
        if any(p.min_p > 0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], dtype=torch.float32)
            logits.masked_fill_(min_p_remove_mask(logits, min_p), float("-inf"))
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            top_k = torch.tensor([p.top_k for p in params], dtype=torch.int64)
            top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32)
            logits.masked_fill_(top_k_top_p_remove_mask(logits, top_k, top_p), float("-inf"))
        return logits


def _plain_greedy(state: RequestSamplingState) -> bool:
    """Greedy with nothing that edits the logits first (min_tokens, logit_bias, penalties)."""
    params = state.params
    return (
        params.is_greedy
        and not state.needs_min_tokens_mask
        and not params.logit_bias
        and not params.uses_penalties
    )


def _rows(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """tensor[rows], without a copy when rows is every row in order."""
    if len(rows) == tensor.shape[0]:
        return tensor
    return tensor[rows]


def _apply_min_tokens(logits: torch.Tensor, states: Sequence[RequestSamplingState]) -> None:
    vocab = logits.shape[1]
    for row, state in enumerate(states):
        if state.needs_min_tokens_mask:
            logits[row].index_fill_(0, state.blocked_ids_tensor(vocab), float("-inf"))


def _apply_logit_bias(logits: torch.Tensor, states: Sequence[RequestSamplingState]) -> None:
    vocab = logits.shape[1]
    for row, state in enumerate(states):
        if state.params.logit_bias:
            ids, values = state.bias_tensors(vocab)
            logits[row].index_add_(0, ids, values)


def _apply_penalties(logits: torch.Tensor, states: Sequence[RequestSamplingState]) -> None:
    rows = [i for i, s in enumerate(states) if s.params.uses_penalties]
    if not rows:
        return
    vocab = logits.shape[1]
    chosen = [states[i] for i in rows]
    params = [s.params for s in chosen]
    logits[rows] = apply_penalties(
        logits[rows],
        prompt_mask=torch.stack([s.prompt_mask(vocab) for s in chosen]),
        output_counts=torch.stack([s.output_counts(vocab) for s in chosen]),
        repetition=torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32),
        frequency=torch.tensor([p.frequency_penalty for p in params], dtype=torch.float32),
        presence=torch.tensor([p.presence_penalty for p in params], dtype=torch.float32),
    )
