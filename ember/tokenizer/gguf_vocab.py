"""The vocabulary part of GGUF metadata, interpreted the way llama.cpp's loader does.

This settles, for a GGUF file: each token's attributes, the special ids (with llama.cpp's
per-model defaults), whether BOS/EOS are added, which tokens end generation, and which
tokens are matched verbatim in text before tokenization (the "special tokens cache").
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntFlag
from itertools import compress
from typing import Any

from ember.errors import TokenizerError
from ember.tokenizer.pretokenize import PreTokenizerPreset, preset_for


class TokenAttr(IntFlag):
    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8


# GGUF `tokenizer.ggml.token_type` value -> attributes (0 and unknown values: undefined).
_TYPE_TO_ATTR = (
    int(TokenAttr.UNDEFINED),
    int(TokenAttr.NORMAL),
    int(TokenAttr.UNKNOWN),
    int(TokenAttr.CONTROL),
    int(TokenAttr.USER_DEFINED),
    int(TokenAttr.UNUSED),
    int(TokenAttr.BYTE),
)

SPECIAL_TEXT_ATTRS = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN
HIDDEN_ATTRS = TokenAttr.CONTROL | TokenAttr.UNKNOWN  # dropped from text unless asked for

# Token texts llama.cpp treats as ending generation.
_EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
)  # fmt: skip
# Tokens found by text when the GGUF gives no id for them, each becoming a control token:
# (name, GGUF keys, texts, whether it ends generation).
_FOUND_BY_TEXT = (
    ("fim_pre", ("fim_pre_token_id", "prefix_token_id"),
     ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
      "<|code_prefix|>", "<|prefix|>"), False),
    ("fim_suf", ("fim_suf_token_id", "suffix_token_id"),
     ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
      "<|code_suffix|>", "<|suffix|>"), False),
    ("fim_mid", ("fim_mid_token_id", "middle_token_id"),
     ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
      "<|code_middle|>", "<|middle|>"), False),
    ("fim_pad", ("fim_pad_token_id",),
     ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"), True),
    ("fim_rep", ("fim_rep_token_id",),
     ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"), True),
    ("fim_sep", ("fim_sep_token_id",), ("<|file_sep|>",), True),
    ("eot", ("eot_token_id",),
     ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
      "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"), True),
    ("eom", ("eom_token_id",), ("<|eom_id|>",), True),
)  # fmt: skip
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

_KEY = "tokenizer.ggml."
_SPECIAL_ID_KEYS = {
    "bos": ("bos_token_id",),
    "eos": ("eos_token_id",),
    "unk": ("unknown_token_id",),
    "pad": ("padding_token_id",),
    **{name: keys for name, keys, _, _ in _FOUND_BY_TEXT},
}


@dataclass
class GGUFVocab:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokens: list[str]
    attrs: list[int]
    token_to_id: dict[str, int]
    scores: Sequence[float] | None
    merges: list[str] | None
    preset: PreTokenizerPreset | None
    ids: dict[str, int | None]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    eog_ids: frozenset[int]
    chat_template: str | None
    # (id, text, attr) of tokens matched verbatim in text, longest text first
    special_matches: list[tuple[int, str, int]] = field(default_factory=list)


def _list(metadata: Mapping[str, Any], key: str, required: bool = False) -> list[Any] | None:
    value = metadata.get(_KEY + key)
    if value is None:
        if required:
            raise TokenizerError(f"GGUF metadata has no {_KEY + key}")
        return None
    if not isinstance(value, list | tuple):
        raise TokenizerError(f"GGUF metadata {_KEY + key} is not an array")
    return list(value)


def _int(metadata: Mapping[str, Any], key: str) -> int | None:
    value = metadata.get(_KEY + key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TokenizerError(f"GGUF metadata {_KEY + key} is not an integer") from None


def _bool(metadata: Mapping[str, Any], key: str, default: bool) -> bool:
    value = metadata.get(_KEY + key)
    return default if value is None else bool(value)


def read_gguf_vocab(metadata: Mapping[str, Any]) -> GGUFVocab:
    model = metadata.get(_KEY + "model")
    if model not in ("gpt2", "llama"):
        raise TokenizerError(
            f"unsupported tokenizer model {model!r} (tokenizer.ggml.model); "
            "Ember reads 'gpt2' (BPE) and 'llama' (SentencePiece)"
        )
    tokens: list[str] = _list(metadata, "tokens", required=True) or []
    n_tokens = len(tokens)
    if n_tokens == 0:
        raise TokenizerError("GGUF metadata tokenizer.ggml.tokens is empty")
    if "" in tokens:
        tokens = [text or f"[EMPTY_{i}]" for i, text in enumerate(tokens)]

    types = _list(metadata, "token_type")
    if types is None:
        attrs = [int(TokenAttr.NORMAL)] * n_tokens
    else:
        if len(types) < n_tokens:
            raise TokenizerError(
                "GGUF metadata tokenizer.ggml.token_type is shorter than the vocab"
            )
        types = types[:n_tokens]
        if min(types) < 0 or max(types) >= len(_TYPE_TO_ATTR):
            types = [t if 0 <= t < len(_TYPE_TO_ATTR) else 0 for t in types]
        attrs = list(map(_TYPE_TO_ATTR.__getitem__, types))

    scores = _list(metadata, "scores")
    if scores is not None and len(scores) < n_tokens:
        raise TokenizerError("GGUF metadata tokenizer.ggml.scores is shorter than the vocab")

    merges: list[str] | None = None
    preset: PreTokenizerPreset | None = None
    if model == "gpt2":
        merges = [str(m) for m in _list(metadata, "merges", required=True) or []]
        preset = preset_for(str(metadata.get(_KEY + "pre") or ""))
        defaults: dict[str, int | None] = {"bos": 11 if preset.has_bos else None, "eos": 11}
        add_bos_default, add_space_prefix_default = preset.add_bos, False
    else:
        defaults = {"bos": 1, "eos": 2, "unk": 0}
        add_bos_default, add_space_prefix_default = True, True

    ids = _special_ids(metadata, defaults, n_tokens)
    token_to_id = dict(zip(tokens, range(n_tokens)))  # noqa: B905 (same length)
    add_bos = _bool(metadata, "add_bos_token", add_bos_default)
    add_eos = _bool(metadata, "add_eos_token", False)
    if add_bos and ids["bos"] is None:
        raise TokenizerError("the model asks for a BOS token but has no BOS id")
    if add_eos and ids["eos"] is None:
        raise TokenizerError("the model asks for an EOS token but has no EOS id")

    eog_ids = _end_of_generation_ids(tokens, token_to_id, attrs, ids)
    template = metadata.get("tokenizer.chat_template")
    vocab = GGUFVocab(
        model=model,
        tokens=tokens,
        attrs=attrs,
        token_to_id=token_to_id,
        # array('f'), not a list of Python floats: 1 MB instead of 8 MB for a 262k vocabulary
        scores=array("f", scores[:n_tokens]) if scores is not None else None,
        merges=merges,
        preset=preset,
        ids=ids,
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=_bool(metadata, "add_space_prefix", add_space_prefix_default),
        eog_ids=eog_ids,
        chat_template=str(template) if template is not None else None,
    )
    vocab.special_matches = _special_matches(tokens, attrs)
    return vocab


def _special_ids(
    metadata: Mapping[str, Any], defaults: dict[str, int | None], n_tokens: int
) -> dict[str, int | None]:
    ids: dict[str, int | None] = {}
    for name, keys in _SPECIAL_ID_KEYS.items():
        default = defaults.get(name)
        if default is not None and default >= n_tokens:
            default = None
        ids[name] = default
        for key in keys:  # later keys are deprecated spellings; llama.cpp lets them win
            value = _int(metadata, key)
            if value is not None and 0 <= value < n_tokens:
                ids[name] = value
    return ids


def _end_of_generation_ids(
    tokens: list[str], token_to_id: dict[str, int], attrs: list[int], ids: dict[str, int | None]
) -> frozenset[int]:
    control = int(TokenAttr.CONTROL)
    for name, _, texts, _ in _FOUND_BY_TEXT:
        if ids[name] is None:
            # llama.cpp takes the first match in an unordered map; we take list order.
            found = next((token_to_id[t] for t in texts if t in token_to_id), None)
            if found is not None:
                ids[name] = found
                attrs[found] |= control
    eog: set[int] = set()
    for name, _, _, ends in _FOUND_BY_TEXT:
        token_id = ids[name]
        if ends and token_id is not None:
            eog.add(token_id)
    for text in _EOG_TEXTS:
        token_id = token_to_id.get(text)
        if token_id is not None:
            eog.add(token_id)
            attrs[token_id] |= control
    for text in _ALWAYS_RENDERED:
        if text in token_to_id:
            attrs[token_to_id[text]] = int(TokenAttr.USER_DEFINED)
    eos_id = ids["eos"]
    if eos_id is not None:
        eog.add(eos_id)

    by_text = {tokens[i]: i for i in eog}
    # Harmony-style vocabularies use <|end|> between messages, not to stop.
    has_call = "<|call|>" in by_text or "<|calls|>" in by_text
    if "<|end|>" in by_text and has_call and ("<|return|>" in by_text or "<|flush|>" in by_text):
        eog.discard(by_text["<|end|>"])
        attrs[by_text["<|end|>"]] = int(TokenAttr.USER_DEFINED)
    # Where </s> is an ordinary token (Gemma 4, PLaMo), it must not stop generation.
    if "</s>" in by_text and ("<|tool_response>" in by_text or "<|plamo:eos|>" in by_text):
        eog.discard(by_text["</s>"])
        attrs[by_text["</s>"]] = int(TokenAttr.NORMAL)
    return frozenset(eog)


def _special_matches(tokens: list[str], attrs: list[int]) -> list[tuple[int, str, int]]:
    wanted = int(SPECIAL_TEXT_ATTRS)
    found = [
        (i, tokens[i], attrs[i]) for i in compress(range(len(attrs)), map(wanted.__and__, attrs))
    ]
    # Longest first (in bytes, as llama.cpp measures), ties by id for determinism.
    found.sort(key=lambda item: (-len(item[1].encode("utf-8")), item[0]))
    return found
