"""Token bitmasks: one int32 row per sequence, bit i % 32 of word i // 32 set when token i is
allowed. Both grammar libraries write this layout, so building and applying masks needs none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


def bitmask_width(vocab_size: int) -> int:
    """int32 words per row for `vocab_size` tokens."""
    return (vocab_size + 31) // 32


def stop_only_row(stop_token_ids: Iterable[int], vocab_size: int) -> torch.Tensor:
    """The bitmask row allowing exactly `stop_token_ids`."""
    words = [0] * bitmask_width(vocab_size)
    for token in stop_token_ids:
        words[token // 32] |= 1 << (token % 32)
    # bit 31 makes an int32 word negative in two's complement
    signed = [word - (1 << 32) if word >= 1 << 31 else word for word in words]
    return torch.tensor(signed, dtype=torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, words] int32 -> [rows, vocab_size] bool, True where the token is allowed."""
    # [rows, words, 32]: an arithmetic shift keeps the sign bits, & 1 drops them again
    bits = (bitmask.unsqueeze(-1) >> _BIT_SHIFTS) & 1
    return bits.flatten(start_dim=1)[:, :vocab_size].bool()


def apply_bitmask_inplace(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int], vocab_size: int
) -> None:
    """Set logits[r, t] to -inf for every listed row r whose bitmask row disallows token t.

    logits: [B, V]; bitmask: [B, words]. Columns from `vocab_size` on (padding the grammar knows
    nothing of) are disallowed too; rows not listed are left alone.
    """
    if not rows:
        return
    covered = min(vocab_size, logits.shape[1])
    index = torch.tensor(rows, dtype=torch.int64)
    disallowed = ~unpack_bitmask(bitmask.index_select(0, index), covered)
    for position, row in enumerate(rows):
        # basic indexing: a view, so masked_fill_ writes into logits
        logits[row, :covered].masked_fill_(disallowed[position], float("-inf"))
        if logits.shape[1] > covered:
            logits[row, covered:] = float("-inf")
