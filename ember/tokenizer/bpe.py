"""Byte-level BPE merging of one pre-tokenized word, following llama.cpp's llm_tokenizer_bpe.

The word arrives byte-level encoded (each UTF-8 byte as one printable character). Adjacent
symbols are merged lowest merge rank first, ties going to the leftmost pair; each merge may
enable new pairs with its neighbours. Symbols that end up outside the vocabulary fall back to
their single bytes (those missing too are dropped, as llama.cpp does).
"""

from __future__ import annotations

import heapq

_CACHE_LIMIT = 200_000


class BPEMerger:
    def __init__(
        self, token_to_id: dict[str, int], merges: list[str], ignore_merges: bool = False
    ) -> None:
        self._token_to_id = token_to_id
        self._merges = merges
        self._ranks: dict[tuple[str, str], int] | None = None  # built on first use
        self._ignore_merges = ignore_merges
        self._cache: dict[str, list[int]] = {}

    def _build_ranks(self) -> dict[tuple[str, str], int]:
        ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(self._merges):
            # The separator is the first space after position 0, so a pair's left side may
            # itself start with a space.
            cut = merge.find(" ", 1)
            pair = (merge[:cut], merge[cut + 1 :]) if cut >= 0 else ("", "")
            ranks.setdefault(pair, rank)
        return ranks

    def encode_word(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ids = self._encode_uncached(word)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _encode_uncached(self, word: str) -> list[int]:
        vocab = self._token_to_id
        if self._ignore_merges and word in vocab:
            return [vocab[word]]
        ranks = self._ranks
        if ranks is None:
            ranks = self._ranks = self._build_ranks()

        symbols = list(word)
        count = len(symbols)
        prev = list(range(-1, count - 1))
        nxt = list(range(1, count + 1))
        nxt[-1] = -1
        heap: list[tuple[int, int, int, str]] = []

        def add_pair(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            rank = ranks.get((symbols[left], symbols[right]))
            if rank is not None:
                heapq.heappush(heap, (rank, left, right, symbols[left] + symbols[right]))

        for i in range(1, count):
            add_pair(i - 1, i)
        while heap:
            _, left, right, merged = heapq.heappop(heap)
            # Stale if either side has changed since the pair was queued.
            if not symbols[left] or not symbols[right] or symbols[left] + symbols[right] != merged:
                continue
            symbols[left] = merged
            symbols[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add_pair(prev[left], left)
            add_pair(left, nxt[left])

        ids: list[int] = []
        for symbol in symbols:
            if not symbol:
                continue
            token_id = vocab.get(symbol)
            if token_id is not None:
                ids.append(token_id)
                continue
            for byte in symbol.encode("utf-8"):
                byte_id = vocab.get(chr(byte)) if byte < 0x80 else None
                if byte_id is not None:
                    ids.append(byte_id)
        return ids
