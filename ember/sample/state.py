"""What the sampler remembers about one running request between steps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from ember.sampling_params import SamplingParams

if TYPE_CHECKING:
    from ember.structured.matcher import GrammarState


class RequestSamplingState:
    """Sampling memory of one request (one sequence when n > 1): tokens so far and its RNG.

    The engine creates one per sequence, passes it to ``Sampler.sample`` every step and calls
    ``append_token`` with the token it keeps; the sampler itself never appends, so a step the
    engine throws away (preemption, rejected draft) leaves no trace except the seeded generator.
    Token counts for the penalties are built on first use and then updated incrementally, so a
    step costs O(vocab) per penalised row, never O(sequence length).
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt_token_ids: Sequence[int],
        eos_token_ids: Iterable[int] = (),
        grammar: GrammarState | None = None,
    ) -> None:
        self.params = params
        self.grammar = grammar
        """The request's structured-output constraint: the model runner masks this sequence's
        logits with it, and append_token advances it."""
        self.prompt_token_ids: Sequence[int] = prompt_token_ids
        self._output_token_ids: list[int] = []
        # vLLM masks EOS during min_tokens even with ignore_eos; so do we, to match its outputs.
        self.min_tokens_blocked_ids: tuple[int, ...] = tuple(
            dict.fromkeys([*params.stop_token_ids, *eos_token_ids])
        )
        self.generator: torch.Generator | None = None
        if params.seed is not None and not params.is_greedy:
            self.generator = torch.Generator(device="cpu")
            self.generator.manual_seed(params.seed)
        self._prompt_mask: torch.Tensor | None = None  # [V] bool
        self._output_counts: torch.Tensor | None = None  # [V] float32
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None  # ([k] int64, [k] float32)
        self._blocked: torch.Tensor | None = None  # [m] int64

    @property
    def output_token_ids(self) -> Sequence[int]:
        """Tokens generated so far (read-only view: mutate through append_token)."""
        return self._output_token_ids

    @property
    def num_output_tokens(self) -> int:
        return len(self._output_token_ids)

    def append_token(self, token_id: int) -> None:
        self._output_token_ids.append(token_id)
        if self._output_counts is not None:
            self._output_counts[token_id] += 1.0
        if self.grammar is not None:
            self.grammar.accept(token_id)

    @property
    def needs_min_tokens_mask(self) -> bool:
        return (
            bool(self.min_tokens_blocked_ids)
            and len(self._output_token_ids) < self.params.min_tokens
            # A grammar that allows nothing but a stop token outranks min_tokens.
            and not (self.grammar is not None and self.grammar.must_stop)
        )

    def blocked_ids_tensor(self, vocab_size: int) -> torch.Tensor:
        """[m] int64: EOS and stop token ids, masked while fewer than min_tokens were generated."""
        if self._blocked is None:
            self.params.verify_vocab_size(vocab_size)
            self._blocked = torch.tensor(self.min_tokens_blocked_ids, dtype=torch.int64)
        return self._blocked

    def bias_tensors(self, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids [k], biases [k]) of the request's logit_bias."""
        if self._bias is None:
            self.params.verify_vocab_size(vocab_size)
            bias = self.params.logit_bias or {}
            ids = torch.tensor(list(bias), dtype=torch.int64)
            values = torch.tensor(list(bias.values()), dtype=torch.float32)
            self._bias = (ids, values)
        return self._bias

    def prompt_mask(self, vocab_size: int) -> torch.Tensor:
        """[V] bool: which tokens occur in the prompt."""
        if self._prompt_mask is None:
            ids = torch.as_tensor(list(self.prompt_token_ids), dtype=torch.int64)
            self._prompt_mask = torch.bincount(ids, minlength=vocab_size)[:vocab_size] > 0
        return self._prompt_mask

    def output_counts(self, vocab_size: int) -> torch.Tensor:
        """[V] float32: how often each token occurs in the output so far."""
        if self._output_counts is None:
            ids = torch.as_tensor(self._output_token_ids, dtype=torch.int64)
            counts = torch.bincount(ids, minlength=vocab_size)[:vocab_size]
            self._output_counts = counts.to(torch.float32)
        return self._output_counts
