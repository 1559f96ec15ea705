"""IncrementalDetokenizer: streamed text equals decode() and never splits a character."""

from __future__ import annotations

import random

from ember.tokenizer.base import Tokenizer
from ember.tokenizer.detokenizer import IncrementalDetokenizer


class ByteTokenizer(Tokenizer):
    """Token i < 256 is byte i; then a few whole pieces; the last one is a special token."""

    PIECES = [b"hello", " wörld".encode(), "日本".encode(), "😀".encode()[:3], b"<eos>"]

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        self._check_id(token_id)
        return bytes([token_id]) if token_id < 256 else self.PIECES[token_id - 256]

    def id_to_piece(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("latin-1")

    def is_special(self, token_id: int) -> bool:
        return token_id == self.vocab_size - 1

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.PIECES)

    @property
    def bos_token_id(self) -> int | None:
        return None

    @property
    def eos_token_id(self) -> int | None:
        return self.vocab_size - 1

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset([self.vocab_size - 1])

    @property
    def chat_template(self) -> str | None:
        return None


def stream(tokenizer: Tokenizer, ids: list[int], skip_special: bool = False) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special)
    return [detokenizer.add(i) for i in ids] + [detokenizer.flush()]


def test_multibyte_characters_are_held_back_until_complete() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("a€😀")  # 1 + 3 + 4 bytes
    assert stream(tok, ids) == ["a", "", "", "€", "", "", "", "😀", ""]


def test_valid_text_streams_without_replacement_characters() -> None:
    tok = ByteTokenizer()
    rng = random.Random(0)
    alphabet = "aZ é€日本😀🏽\n"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        chunks = stream(tok, tok.encode(text))
        assert "".join(chunks) == text
        assert all("\ufffd" not in chunk for chunk in chunks)


def test_any_token_sequence_streams_to_decode() -> None:
    # Random ids mix stray continuation bytes, truncated characters and whole pieces; the
    # stream must still equal decode(), replacement characters included.
    tok = ByteTokenizer()
    rng = random.Random(1)
    interesting = [0x41, 0x80, 0xBF, 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0xFF, 256, 257]
    for _ in range(2000):
        ids = [
            rng.choice(interesting) if rng.random() < 0.7 else rng.randrange(tok.vocab_size)
            for _ in range(rng.randint(0, 12))
        ]
        for skip in (False, True):
            assert "".join(stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)


def test_incomplete_tail_is_flushed_as_replacement() -> None:
    tok = ByteTokenizer()
    detokenizer = IncrementalDetokenizer(tok)
    assert detokenizer.add(259) == ""  # first three bytes of 😀
    assert detokenizer.flush() == "\ufffd"
    assert detokenizer.add(ord("x")) == "x"  # usable again after flush


def test_special_tokens_skipped_on_request() -> None:
    tok = ByteTokenizer()
    ids = [256, tok.vocab_size - 1]
    assert "".join(stream(tok, ids)) == "hello<eos>"
    assert "".join(stream(tok, ids, skip_special=True)) == "hello"
