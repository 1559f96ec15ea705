"""Tokenizer built from GGUF metadata, producing the same ids as llama.cpp (build 0c1e570).

encode() follows llama.cpp's llama_vocab::tokenize:
1. Split the text around special-token texts (control, user-defined and unknown tokens,
   longest first; control/unknown ones only when parse_special), keeping the tokens' ids.
2. Tokenize each remaining text fragment: byte-level BPE over pre-tokenized words ("gpt2"),
   or SentencePiece merging ("llama") with spaces escaped to U+2581 and, when
   add_space_prefix, a space put before any fragment that starts the text or follows a
   special token.
3. With add_special, BOS first and EOS last where the model says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ember.errors import TokenizerError
from ember.tokenizer.base import Tokenizer
from ember.tokenizer.bpe import BPEMerger
from ember.tokenizer.gguf_vocab import HIDDEN_ATTRS, GGUFVocab, TokenAttr, read_gguf_vocab
from ember.tokenizer.pretokenize import PreTokenizer
from ember.tokenizer.spm import spm_encode
from ember.tokenizer.unicode_classes import BYTES_ENCODE_TABLE, CHAR_TO_BYTE

_SPACE_ESCAPE = "\u2581"
_C_WHITESPACE = " \t\n\v\f\r"  # what C's isspace() accepts, used by lstrip/rstrip tokens
_SURROGATE = re.compile("[\ud800-\udfff]")
_HIDDEN = int(HIDDEN_ATTRS)
_SHOWN = int(TokenAttr.CONTROL | TokenAttr.UNKNOWN | TokenAttr.USER_DEFINED)
_NORMAL = int(TokenAttr.NORMAL)
_BYTE = int(TokenAttr.BYTE)
_LSTRIP = int(TokenAttr.LSTRIP)
_RSTRIP = int(TokenAttr.RSTRIP)

Fragment = str | int  # raw text, or the id of a special token found in the text


class GGUFTokenizer(Tokenizer):
    def __init__(self, vocab: GGUFVocab) -> None:
        self._vocab = vocab
        self._is_spm = vocab.model == "llama"
        self._piece_cache: dict[int, bytes] = {}
        self._byte_ids: dict[int, int] = {}
        if not self._is_spm:
            assert vocab.preset is not None and vocab.merges is not None
            self._pre = PreTokenizer(list(vocab.preset.patterns))
            self._bpe = BPEMerger(vocab.token_to_id, vocab.merges, vocab.preset.ignore_merges)
        elif vocab.scores is None:
            raise TokenizerError("SentencePiece GGUF vocab has no tokenizer.ggml.scores")

    # -- properties --------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._vocab.tokens)

    @property
    def bos_token_id(self) -> int | None:
        return self._vocab.ids["bos"]

    @property
    def eos_token_id(self) -> int | None:
        return self._vocab.ids["eos"]

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._vocab.eog_ids

    @property
    def chat_template(self) -> str | None:
        return self._vocab.chat_template

    @property
    def add_bos(self) -> bool:
        return self._vocab.add_bos

    def id_to_piece(self, token_id: int) -> str:
        self._check_id(token_id)
        return self._vocab.tokens[token_id]

    def is_special(self, token_id: int) -> bool:
        self._check_id(token_id)
        return bool(self._vocab.attrs[token_id] & _HIDDEN)

    # -- encoding ----------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        vocab = self._vocab
        if _SURROGATE.search(text):
            text = _SURROGATE.sub("\ufffd", text)  # unpaired surrogates cannot be UTF-8
        fragments = self._split_special(text, parse_special) if text else []
        out: list[int] = []
        if add_special and vocab.add_bos:
            out.append(vocab.ids["bos"])  # type: ignore[arg-type]
        if self._is_spm:
            self._encode_spm(fragments, out)
        else:
            for fragment in fragments:
                if isinstance(fragment, int):
                    out.append(fragment)
                    continue
                for word in self._pre.split(fragment):
                    latin1 = word.encode("utf-8").decode("latin-1")
                    out.extend(self._bpe.encode_word(latin1.translate(BYTES_ENCODE_TABLE)))
        if add_special and vocab.add_eos:
            out.append(vocab.ids["eos"])  # type: ignore[arg-type]
        return out

    def _encode_spm(self, fragments: list[Fragment], out: list[int]) -> None:
        vocab = self._vocab
        assert vocab.scores is not None
        follows_special = True
        for fragment in fragments:
            if isinstance(fragment, int):
                out.append(fragment)
                follows_special = True
                continue
            if vocab.add_space_prefix and follows_special:
                fragment = " " + fragment
            escaped = fragment.replace(" ", _SPACE_ESCAPE)
            spm_encode(escaped, vocab.token_to_id, vocab.scores, self._byte_token, out)
            follows_special = False

    def _byte_token(self, byte: int) -> int:
        token_id = self._byte_ids.get(byte)
        if token_id is None:
            lookup = self._vocab.token_to_id
            token_id = lookup.get(f"<0x{byte:02X}>")
            if token_id is None and byte < 0x80:
                token_id = lookup.get(chr(byte))
            if token_id is None:
                token_id = self._vocab.ids["unk"]
            if token_id is None:
                raise TokenizerError(f"the vocabulary has no token for byte 0x{byte:02X}")
            self._byte_ids[byte] = token_id
        return token_id

    def _split_special(self, text: str, parse_special: bool) -> list[Fragment]:
        fragments: list[Fragment] = [text]
        present = set(text)
        for token_id, token_text, attr in self._vocab.special_matches:
            if not parse_special and attr & _HIDDEN:
                continue
            if token_text[0] not in present or token_text not in text:
                continue
            split: list[Fragment] = []
            for fragment in fragments:
                if isinstance(fragment, int) or token_text not in fragment:
                    split.append(fragment)
                else:
                    _split_on(fragment, token_text, token_id, attr, split)
            fragments = split
        return fragments

    # -- decoding ----------------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._piece_cache.get(token_id)
        if piece is None:
            self._check_id(token_id)
            piece = self._piece_cache[token_id] = self._compute_piece(token_id)
        return piece

    def _compute_piece(self, token_id: int) -> bytes:
        # llama.cpp's token_to_piece(special=true)
        text = self._vocab.tokens[token_id]
        attr = self._vocab.attrs[token_id]
        if attr & _SHOWN:
            return text.encode("utf-8")
        if attr & _NORMAL:
            if self._is_spm:
                return text.replace(_SPACE_ESCAPE, " ").encode("utf-8")
            return _byte_level_decode(text)
        if attr & _BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                return b""
        return b""


def _split_on(
    fragment: str, token_text: str, token_id: int, attr: int, out: list[Fragment]
) -> None:
    start = 0
    while (found := fragment.find(token_text, start)) >= 0:
        left = fragment[start:found]
        if attr & _LSTRIP:
            left = left.rstrip(_C_WHITESPACE)
        if left:
            out.append(left)
        out.append(token_id)
        start = found + len(token_text)
        if attr & _RSTRIP:
            while start < len(fragment) and fragment[start] in _C_WHITESPACE:
                start += 1
    if start < len(fragment):
        out.append(fragment[start:])


def _byte_level_decode(text: str) -> bytes:
    out = bytearray()
    for char in text:
        byte = CHAR_TO_BYTE.get(char)
        if byte is not None:
            out.append(byte)
        else:
            # llama.cpp's marker for a character outside the byte alphabet
            hex_bytes = char.encode("utf-8").hex()
            out += f"[UNK_BYTE_0x{hex_bytes}{text}]".encode()
    return bytes(out)


def tokenizer_from_gguf_metadata(metadata: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer described by a GGUF file's key/value metadata (plain Python values)."""
    return GGUFTokenizer(read_gguf_vocab(metadata))
