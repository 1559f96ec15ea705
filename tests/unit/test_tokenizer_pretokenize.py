"""Pre-tokenizers: llama.cpp's hand-written scanners and regex emulation against real regexes."""

from __future__ import annotations

import random

import pytest
import regex

from ember.errors import TokenizerError
from ember.tokenizer.pretokenize import (
    GPT2_PATTERN,
    LLAMA3_PATTERN,
    PRESETS,
    QWEN2_PATTERN,
    PreTokenizer,
    preset_for,
)
from ember.tokenizer.unicode_classes import (
    LETTER,
    NUMBER,
    SYMBOL,
    UNDEFINED,
    WHITESPACE,
    byte_encode,
    char_class,
)

# The patterns as published in tokenizer.json files (with the final `\s+` GPT-2 omits in
# llama.cpp's copy, and case-insensitive groups), run by the `regex` module.
ORIGINAL = {
    GPT2_PATTERN: GPT2_PATTERN + r"|\s+",
    LLAMA3_PATTERN: r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    QWEN2_PATTERN: r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
# Characters whose classes agree between Unicode 15.1 (llama.cpp) and the `regex` module.
POOL = list("ab AB'sStTreLLvVdDmM\n\r\t  12345.,!?-_()/éÉ日本語😀\u00a0\u2003xyz'") + [
    "'s",
    "'LL",
    "  ",
    "\r\n",
]


def random_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 30))) for _ in range(count)]


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN])
def test_scanners_split_like_the_regex(pattern: str) -> None:
    oracle = regex.compile(ORIGINAL[pattern])
    pre = PreTokenizer([pattern])
    for text in random_texts(5, 2000):
        assert pre.split(text) == [m.group() for m in oracle.finditer(text)], text


def test_regex_rules_run_on_collapsed_text_like_the_regex() -> None:
    # The same pattern, made different enough not to use the scanner: emulation path.
    pre = PreTokenizer([GPT2_PATTERN + r"|\s+"])
    oracle = regex.compile(ORIGINAL[GPT2_PATTERN])
    for text in random_texts(6, 2000):
        assert pre.split(text) == [m.group() for m in oracle.finditer(text)], text


def test_rules_keep_matches_and_gaps() -> None:
    # SmolLM2 ("smollm"): every digit alone, then GPT-2 words.
    pre = PreTokenizer(list(preset_for("smollm").patterns))
    assert pre.split("Hi 2024 it's  ok\n") == [
        "Hi", " ", "2", "0", "2", "4", " it", "'s", " ", " ok", "\n",
    ]  # fmt: skip
    assert "".join(pre.split("x\u00a0\u00a0y 12")) == "x\u00a0\u00a0y 12"


def test_llama3_splits_numbers_in_threes_and_keeps_newline_runs() -> None:
    pre = PreTokenizer(list(preset_for("llama-bpe").patterns))
    assert pre.split("1234567 ab\n\n  cd") == ["123", "456", "7", " ab", "\n\n", " ", " cd"]


def test_non_ascii_patterns_use_wide_matching() -> None:
    pre = PreTokenizer(list(preset_for("bloom").patterns))
    assert pre.split("hello, world。 ok") == ["hello", ",", " world", "。", " ok"]


def test_every_preset_compiles_and_splits_losslessly() -> None:
    text = "Hello, World! It's 2024: 12345 ünïcode 日本語 😀\n\n\tend  "
    for name, preset in PRESETS.items():
        words = PreTokenizer(list(preset.patterns)).split(text)
        assert "".join(words) == text, name
        assert all(words), name


def test_unknown_preset_is_an_error() -> None:
    with pytest.raises(TokenizerError, match="unsupported BPE pre-tokenizer type 'nope'"):
        preset_for("nope")
    assert preset_for("") is PRESETS["default"]


def test_character_classes_follow_unicode_15_1() -> None:
    assert char_class("a") == LETTER
    assert char_class("٣") == NUMBER  # Arabic-Indic digit three
    assert char_class("\u00a0") & WHITESPACE and char_class("\u3000") & WHITESPACE
    assert not char_class("\u200b") & WHITESPACE  # zero width space is not white space
    assert char_class("\U0001fae8") == SYMBOL  # shaking face, new in Unicode 15.0
    assert char_class("\U00031350") == LETTER  # CJK extension H, new in 15.0
    assert char_class("\U0002ebf0") == LETTER  # CJK extension I, new in 15.1
    assert char_class("\U000e0080") == UNDEFINED  # unassigned


def test_byte_encode_maps_every_byte_to_one_printable_character() -> None:
    assert byte_encode(" a\n") == "ĠaĊ"
    assert len(byte_encode("é")) == 2
    assert len({byte_encode(chr(c)) for c in range(128)}) == 128
