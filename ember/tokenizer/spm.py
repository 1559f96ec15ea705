"""SentencePiece-style (GGUF "llama" model) tokenization, following llama.cpp's llm_tokenizer_spm.

The text (spaces already escaped to U+2581) starts as one symbol per character. The adjacent
pair whose concatenation is the highest-scoring vocabulary token is merged first, ties going
to the leftmost pair, until no pair forms a token. Because only pairs that form a token are
merged, every multi-character symbol is a token; a single character that is not a token is
emitted as its UTF-8 bytes via the <0xXX> byte tokens.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence


def spm_encode(
    text: str,
    token_to_id: dict[str, int],
    scores: Sequence[float],
    byte_token: Callable[[int], int],
    out: list[int],
) -> None:
    count = len(text)
    if count == 0:
        return
    symbols = list(text)
    prev = list(range(-1, count - 1))
    nxt = list(range(1, count + 1))
    nxt[-1] = -1
    # (-score, left, right, merged text): heapq pops the highest score, then the leftmost pair.
    heap: list[tuple[float, int, int, str]] = []

    def add_pair(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        merged = symbols[left] + symbols[right]
        token_id = token_to_id.get(merged)
        if token_id is not None:
            heapq.heappush(heap, (-scores[token_id], left, right, merged))

    for i in range(1, count):
        add_pair(i - 1, i)
    while heap:
        _, left, right, merged = heapq.heappop(heap)
        if not symbols[left] or not symbols[right] or symbols[left] + symbols[right] != merged:
            continue  # one side changed since the pair was queued
        symbols[left] = merged
        symbols[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        add_pair(prev[left], left)
        add_pair(left, nxt[left])

    index = 0
    while index != -1:
        symbol = symbols[index]
        token_id = token_to_id.get(symbol)
        if token_id is not None:
            out.append(token_id)
        else:
            out.extend(byte_token(byte) for byte in symbol.encode("utf-8"))
        index = nxt[index]
