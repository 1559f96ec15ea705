"""Where one sequence stands in its grammar.

A GrammarState belongs to one RequestSamplingState (one per sequence, so n > 1 gets one matcher
per completion) and advances only through RequestSamplingState.append_token, i.e. exactly with
the tokens the engine keeps. The scheduler never takes a kept token back: a preempted request
keeps its output tokens and recomputes prompt + output with no sampling until the end, so the
matcher needs no rollback to stay in step with the request.

The state is library-free: the backend's matcher (backend.GrammarMatcher) does the matching.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import torch

from ember.structured.grammar import error_detail

if TYPE_CHECKING:
    from ember.structured.backend import GrammarMatcher


class GrammarState:
    def __init__(
        self,
        compiled: Future[Any],
        vocab_size: int,
        stop_row: torch.Tensor,
        new_matcher: Callable[[Any], GrammarMatcher],
    ) -> None:
        self._compiled = compiled
        self._new_matcher = new_matcher
        self.vocab_size = vocab_size
        """Columns of the model's logits the grammar covers."""
        self._stop_row = stop_row
        """The bitmask row that allows the stop tokens and nothing else."""
        self._matcher: GrammarMatcher | None = None
        self._next_row: torch.Tensor | None = None
        """A mask already computed for the next step (after a token that completed the grammar)."""
        self.ended = False
        """The grammar is complete and nothing may follow: the request ends now, with "stop"."""
        self.must_stop = False
        """The grammar allows nothing but a stop token next (it matched the empty string):
        min_tokens must not mask that token."""
        self.error: str | None = None
        """One-line reason the request cannot go on (the compile failed, a token was refused)."""

    @property
    def bitmask_width(self) -> int:
        return int(self._stop_row.shape[0])

    def fill_mask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into bitmask[row], waiting for the compile if needed.

        On an error the row stays all-allowed (the step still needs a token) and `error` says
        why; the engine then ends the request.
        """
        if self.error is not None:
            return
        if self._next_row is not None:
            bitmask[row] = self._next_row
            self._next_row = None
        else:
            try:
                matcher = self._get_matcher()
            except Exception as exc:  # noqa: BLE001 - a failed compile ends this request only
                self.error = (
                    f"structured output: the grammar failed to compile: {error_detail(exc)}"
                )
                return
            try:
                matcher.fill_next_token_bitmask(bitmask, row)
            except Exception as exc:  # noqa: BLE001 - e.g. a grammar past the library's limits
                bitmask[row] = -1
                self.error = f"structured output: the grammar failed: {error_detail(exc)}"
                return
        self.must_stop = bool(torch.equal(bitmask[row], self._stop_row))

    def accept(self, token_id: int) -> None:
        """Advance past the token the engine kept."""
        if self.error is not None or self.ended:
            return
        matcher = self._matcher
        if matcher is None or not matcher.accept_token(token_id):
            # Only a token outside the mask gets here (e.g. logits that were all -inf or NaN).
            self.error = f"structured output: token {token_id} does not fit the grammar"
            return
        if matcher.is_terminated():  # it accepted a stop token
            self.ended = True
        elif matcher.is_completed():
            # Complete, but maybe extensible (a number may take more digits): end only when the
            # next mask allows nothing but a stop token. The mask is kept for the next step.
            row = torch.empty((1, self.bitmask_width), dtype=torch.int32)
            try:
                matcher.fill_next_token_bitmask(row, 0)
            except Exception as exc:  # noqa: BLE001 - as in fill_mask
                self.error = f"structured output: the grammar failed: {error_detail(exc)}"
                return
            if torch.equal(row[0], self._stop_row):
                self.ended = True
            else:
                self._next_row = row[0]

    def _get_matcher(self) -> GrammarMatcher:
        if self._matcher is None:
            self._matcher = self._new_matcher(self._compiled.result())
        return self._matcher
