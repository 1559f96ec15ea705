"""Streaming detokenization: text as tokens arrive, never splitting a UTF-8 character.

A token may end in the middle of a multi-byte character (byte-fallback tokens such as <0xE2>,
or byte-level BPE pieces), so bytes that do not yet form a complete character are held back
until later tokens complete them, or until flush(). Invariant: the concatenation of every
add() result and flush() equals tokenizer.decode(all ids, skip_special_tokens).
"""

from __future__ import annotations

import codecs

from ember.tokenizer.base import Tokenizer


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        # Python's incremental UTF-8 decoder holds back incomplete trailing sequences and
        # replaces invalid bytes exactly as bytes.decode(errors="replace") would.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """The text completed by `token_id` ("" while a character is still incomplete)."""
        if self._skip_special and self._tokenizer.is_special(token_id):
            return ""
        return self._decoder.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
