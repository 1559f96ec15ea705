"""Tokenizer over a Hugging Face model directory (tokenizer.json via the `tokenizers` library).

Reads tokenizer_config.json for BOS/EOS, add_bos_token and the chat template (or
chat_template.jinja beside it), and generation_config.json for extra end-of-generation ids.
token_bytes() follows the tokenizer.json decoder (byte-level, or byte-fallback + "▁" -> " ")
so that decoding stays byte-exact and streamable; decode() is the concatenation of those
bytes (see base.py), which for these decoders only differs from HF's decode() in keeping a
leading space that HF's Strip decoder would remove.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ember.errors import TokenizerError
from ember.tokenizer.base import Tokenizer
from ember.tokenizer.unicode_classes import CHAR_TO_BYTE

# Added special tokens that end generation even when no config lists them (as llama.cpp does).
_END_OF_TURN_TEXTS = frozenset(
    ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>"]
)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{path.name}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path.name}: expected a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    # tokenizer_config stores tokens as plain strings or as serialized AddedToken dicts.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pick_template(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # named templates: prefer "default"
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default") or next(iter(named.values()), None)
        return chosen if isinstance(chosen, str) else None
    return None


class HFTokenizer(Tokenizer):
    def __init__(
        self,
        tokenizer: Any,
        config: dict[str, Any] | None = None,
        generation_config: dict[str, Any] | None = None,
        chat_template: str | None = None,
    ) -> None:
        config = config or {}
        generation_config = generation_config or {}
        self._tok = tokenizer
        self._tok_plain_specials: Any = None  # a copy that reads special-token text as text
        self._size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        added = tokenizer.get_added_tokens_decoder()
        self._added_text = {int(i): t.content for i, t in added.items()}
        self._special_ids = frozenset(int(i) for i, t in added.items() if t.special)
        self._bos_id = self._id_of(_token_text(config.get("bos_token")))
        self._eos_id = self._id_of(_token_text(config.get("eos_token")))
        if self._bos_id is None and isinstance(generation_config.get("bos_token_id"), int):
            self._bos_id = generation_config["bos_token_id"]
        gen_eos = generation_config.get("eos_token_id")
        gen_eos_ids = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        if self._eos_id is None and gen_eos_ids:
            self._eos_id = int(gen_eos_ids[0])
        eog = {int(i) for i in gen_eos_ids if isinstance(i, int)}
        eog |= {i for i in self._special_ids if self._added_text[i] in _END_OF_TURN_TEXTS}
        if self._eos_id is not None:
            eog.add(self._eos_id)
        self._eog = frozenset(eog)
        self._add_bos = config.get("add_bos_token") is True
        self._chat_template = chat_template or _pick_template(config.get("chat_template"))
        self._piece_mode, self._replacements = self._decoder_mode(tokenizer)
        self._piece_cache: dict[int, bytes] = {}

    @classmethod
    def from_directory(cls, path: str | Path) -> HFTokenizer:
        from tokenizers import Tokenizer as RustTokenizer

        path = Path(path)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise TokenizerError(f"{path}: no tokenizer.json")
        try:
            tokenizer = RustTokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # the Rust library raises a generic Exception
            raise TokenizerError(f"{tokenizer_file}: cannot load ({exc})") from None
        template_file = path / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
        return cls(
            tokenizer,
            _read_json(path / "tokenizer_config.json"),
            _read_json(path / "generation_config.json"),
            chat_template=template,
        )

    def _id_of(self, text: str | None) -> int | None:
        if text is None:
            return None
        token_id = self._tok.token_to_id(text)
        return int(token_id) if token_id is not None else None

    @staticmethod
    def _decoder_mode(tokenizer: Any) -> tuple[str, list[tuple[str, str]]]:
        decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
        kind = decoder.get("type")
        if kind == "ByteLevel":
            return "byte_level", []
        if kind == "Metaspace":
            return "text", [(decoder.get("replacement", "\u2581"), " ")]
        if kind == "Sequence":
            steps = decoder.get("decoders", [])
            kinds = {step.get("type") for step in steps}
            if "ByteLevel" in kinds:
                return "byte_level", []
            replacements = [
                (step["pattern"]["String"], step["content"])
                for step in steps
                if step.get("type") == "Replace" and "String" in step.get("pattern", {})
            ]
            if kinds <= {"Replace", "ByteFallback", "Fuse", "Strip"}:
                mode = "byte_fallback" if "ByteFallback" in kinds else "text"
                return mode, replacements
        return "library", []

    # -- interface ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._size

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_id

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eog

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    def id_to_piece(self, token_id: int) -> str:
        self._check_id(token_id)
        piece = self._tok.id_to_token(token_id)
        return piece if piece is not None else ""

    def is_special(self, token_id: int) -> bool:
        self._check_id(token_id)
        return token_id in self._special_ids

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        tokenizer = self._tok if parse_special else self._plain_specials_tokenizer()
        ids = list(tokenizer.encode(text, add_special_tokens=add_special).ids)
        bos = self._bos_id
        if add_special and self._add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    def _plain_specials_tokenizer(self) -> Any:
        if self._tok_plain_specials is None:
            from tokenizers import Tokenizer as RustTokenizer

            copy = RustTokenizer.from_str(self._tok.to_str())
            copy.encode_special_tokens = True
            self._tok_plain_specials = copy
        return self._tok_plain_specials

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._piece_cache.get(token_id)
        if piece is None:
            self._check_id(token_id)
            piece = self._piece_cache[token_id] = self._compute_piece(token_id)
        return piece

    def _compute_piece(self, token_id: int) -> bytes:
        if token_id in self._added_text:
            return self._added_text[token_id].encode("utf-8")
        if self._piece_mode == "library":
            return str(self._tok.decode([token_id], skip_special_tokens=False)).encode("utf-8")
        text = self.id_to_piece(token_id)
        if self._piece_mode == "byte_level":
            return b"".join(
                bytes([CHAR_TO_BYTE[c]]) if c in CHAR_TO_BYTE else c.encode("utf-8") for c in text
            )
        if self._piece_mode == "byte_fallback" and len(text) == 6 and text.startswith("<0x"):
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                pass
        for old, new in self._replacements:
            text = text.replace(old, new)
        return text.encode("utf-8")


def tokenizer_from_hf_directory(path: str | Path) -> HFTokenizer:
    """The tokenizer of a Hugging Face model directory (needs tokenizer.json)."""
    return HFTokenizer.from_directory(path)
