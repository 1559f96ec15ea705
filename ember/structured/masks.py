"""The per-step token masks of a batch's constrained rows, computed beside the forward pass.

The model runner calls `GrammarMasker.start(grammars)` before its forward pass; a worker thread
then fills one bitmask row per constrained row (waiting for a grammar still compiling, if any)
while the model computes the logits, and `PendingMasks.apply(logits)` joins it and sets every
disallowed logit to -inf in place (plain torch: bitmask.py). A batch with no constrained row
never gets here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ember.structured.bitmask import apply_bitmask_inplace
from ember.structured.matcher import GrammarState


class PendingMasks:
    def __init__(
        self, future: Future[None], bitmask: torch.Tensor, rows: list[int], vocab_size: int
    ) -> None:
        self._future = future
        self._bitmask = bitmask
        self._rows = rows
        self._vocab_size = vocab_size

    def apply(self, logits: torch.Tensor) -> None:
        """Mask logits [B, V] in place (rows as given to start); waits for the fill."""
        self._future.result()
        apply_bitmask_inplace(logits, self._bitmask, self._rows, self._vocab_size)


class GrammarMasker:
    """Owns the mask thread (started on first use)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def start(self, grammars: Sequence[GrammarState | None]) -> PendingMasks | None:
        """Begin filling masks for the rows whose grammar is set; None when there are none."""
        if all(grammar is None for grammar in grammars):
            return None
        chosen = [(row, grammar) for row, grammar in enumerate(grammars) if grammar is not None]
        # One engine has one vocabulary: every grammar of a batch has the same width.
        first = chosen[0][1]
        bitmask = torch.full((len(grammars), first.bitmask_width), -1, dtype=torch.int32)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ember-mask")
        future = self._executor.submit(_fill, chosen, bitmask)
        return PendingMasks(future, bitmask, [row for row, _ in chosen], first.vocab_size)


@torch.inference_mode()  # the runner's tensors are inference tensors; so are these
def _fill(rows: list[tuple[int, GrammarState]], bitmask: torch.Tensor) -> None:
    for row, grammar in rows:
        grammar.fill_mask(bitmask, row)
