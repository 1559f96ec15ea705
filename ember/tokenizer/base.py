"""The tokenizer interface every Ember tokenizer implements.

Invariants:
- ``decode(ids)`` is the UTF-8 decoding (invalid bytes become U+FFFD) of the concatenation of
  ``token_bytes(id)`` over the ids, which is how llama.cpp's server builds completion text
  (one ``token_to_piece`` per token, no clean-up pass). With ``skip_special_tokens`` the
  special tokens contribute nothing. Streaming (see detokenizer.py) relies on this.
- ``eos_token_ids`` holds every id that ends generation, the EOS id included.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from ember.errors import TokenizerError


class Tokenizer(ABC):
    """Text <-> token ids, plus what chat templates and the sampler need to know."""

    @abstractmethod
    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`.

        add_special: add BOS (and EOS) where the model says so.
        parse_special: special-token texts inside `text` (e.g. "<|im_start|>") become their ids;
        otherwise they are tokenized as plain text.
        """

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes `token_id` contributes to output text (special tokens as their text)."""

    @abstractmethod
    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary string of `token_id` (e.g. "Ġthe", "▁the", "<0x0A>")."""

    @abstractmethod
    def is_special(self, token_id: int) -> bool:
        """True for control tokens that `skip_special_tokens` removes from text."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def bos_token_id(self) -> int | None: ...

    @property
    @abstractmethod
    def eos_token_id(self) -> int | None: ...

    @property
    @abstractmethod
    def eos_token_ids(self) -> frozenset[int]:
        """EOS plus every end-of-generation token (<|im_end|>, <end_of_turn>, ...)."""

    @property
    @abstractmethod
    def chat_template(self) -> str | None: ...

    @property
    def bos_token(self) -> str:
        """BOS as text for chat templates ("" when the model has none)."""
        return self._special_text(self.bos_token_id)

    @property
    def eos_token(self) -> str:
        """EOS as text for chat templates ("" when the model has none)."""
        return self._special_text(self.eos_token_id)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        pieces = [
            self.token_bytes(token_id)
            for token_id in ids
            if not (skip_special_tokens and self.is_special(token_id))
        ]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def _special_text(self, token_id: int | None) -> str:
        if token_id is None:
            return ""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(
                f"token id {token_id} is outside the vocabulary (size {self.vocab_size})"
            )
