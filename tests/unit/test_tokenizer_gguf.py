"""GGUF tokenizers on small hand-made vocabularies: the llama.cpp rules one at a time."""

from __future__ import annotations

from typing import Any

import pytest

from ember.errors import TokenizerError
from ember.tokenizer.gguf_tokenizer import tokenizer_from_gguf_metadata
from ember.tokenizer.unicode_classes import BYTE_TO_CHAR

NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6


def bpe_metadata(
    extra_tokens: list[tuple[str, int]],
    merges: list[str],
    pre: str = "gpt-2",
    **keys: Any,
) -> dict[str, Any]:
    """A byte-level BPE vocab: the 256 byte characters, then `extra_tokens` (text, type)."""
    tokens = list(BYTE_TO_CHAR) + [text for text, _ in extra_tokens]
    types = [NORMAL] * 256 + [kind for _, kind in extra_tokens]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    }
    metadata.update({f"tokenizer.ggml.{k}": v for k, v in keys.items()})
    return metadata


def spm_metadata(pieces: list[tuple[str, float, int]], **keys: Any) -> dict[str, Any]:
    """A SentencePiece vocab: <unk> <s> </s>, the 256 byte tokens, then `pieces`."""
    head = [("<unk>", 0.0, 2), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL)]
    byte_tokens = [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
    entries = head + byte_tokens + pieces
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [text for text, _, _ in entries],
        "tokenizer.ggml.scores": [score for _, score, _ in entries],
        "tokenizer.ggml.token_type": [kind for _, _, kind in entries],
    }
    metadata.update({f"tokenizer.ggml.{k}": v for k, v in keys.items()})
    return metadata


def byte_id(char: str) -> int:
    return BYTE_TO_CHAR.index(char)


# -- byte-level BPE ---------------------------------------------------------------------------


def test_bpe_merges_lowest_rank_first() -> None:
    # "abc": (b c) outranks (a b), so "a" + "bc"; with the ranks swapped, "ab" + "c".
    extra = [("ab", NORMAL), ("bc", NORMAL)]
    tok = tokenizer_from_gguf_metadata(bpe_metadata(extra, ["b c", "a b"]))
    assert tok.encode("abc") == [byte_id("a"), 257]
    tok = tokenizer_from_gguf_metadata(bpe_metadata(extra, ["a b", "b c"]))
    assert tok.encode("abc") == [256, byte_id("c")]


def test_bpe_merges_leftmost_on_equal_pairs() -> None:
    tok = tokenizer_from_gguf_metadata(bpe_metadata([("aa", NORMAL)], ["a a"]))
    assert tok.encode("aaa") == [256, byte_id("a")]


def test_bpe_words_do_not_merge_across_pre_tokenizer_splits() -> None:
    # The GPT-2 pattern splits "a b" into "a" and " b" (Ġb), so (a Ġ) never merges.
    extra = [("aĠ", NORMAL), ("Ġb", NORMAL)]
    tok = tokenizer_from_gguf_metadata(bpe_metadata(extra, ["a Ġ", "Ġ b"]))
    assert tok.encode("a b") == [byte_id("a"), 257]


def test_bpe_multibyte_characters_are_byte_level() -> None:
    tok = tokenizer_from_gguf_metadata(bpe_metadata([], []))
    ids = tok.encode("é😀")
    assert [tok.token_bytes(i) for i in ids] == [bytes([b]) for b in "é😀".encode()]
    assert tok.decode(ids) == "é😀"


def test_ignore_merges_takes_whole_word_tokens() -> None:
    # llama3-style: a word that is a token is used whole, even without a merge path to it.
    tok = tokenizer_from_gguf_metadata(bpe_metadata([("abc", NORMAL)], [], pre="llama-bpe"))
    assert tok.encode("abc", add_special=False) == [256]
    tok = tokenizer_from_gguf_metadata(bpe_metadata([("abc", NORMAL)], [], pre="gpt-2"))
    assert tok.encode("abc") == [byte_id(c) for c in "abc"]


def test_special_tokens_split_longest_first() -> None:
    extra = [("<a>", CONTROL), ("<a><b>", CONTROL), ("<u>", USER_DEFINED)]
    tok = tokenizer_from_gguf_metadata(bpe_metadata(extra, []))
    assert tok.encode("x<a><b>y<a>") == [byte_id("x"), 257, byte_id("y"), 256]
    assert tok.encode("<u><a>", parse_special=True) == [258, 256]
    # Control tokens become text without parse_special; user-defined ones still match.
    plain = tok.encode("<u><a>", parse_special=False)
    assert plain[0] == 258 and 256 not in plain
    assert tok.decode(plain) == "<u><a>"


def test_bpe_bos_defaults_follow_the_pre_tokenizer() -> None:
    extra = [(f"<t{i}>", CONTROL) for i in range(12)]
    gpt2 = tokenizer_from_gguf_metadata(bpe_metadata(extra, [], pre="gpt-2", bos_token_id=256))
    assert gpt2.encode("a") == [byte_id("a")]  # gpt-2: no BOS unless the file asks
    llama3 = tokenizer_from_gguf_metadata(
        bpe_metadata(extra, [], pre="llama-bpe", bos_token_id=256)
    )
    assert llama3.encode("a") == [256, byte_id("a")]
    assert llama3.encode("a", add_special=False) == [byte_id("a")]
    asked = tokenizer_from_gguf_metadata(
        bpe_metadata(extra, [], pre="gpt-2", bos_token_id=257, add_bos_token=True)
    )
    assert asked.encode("a") == [257, byte_id("a")]
    # Without an id in the file, llama.cpp's BPE default for BOS and EOS is token 11.
    default = tokenizer_from_gguf_metadata(bpe_metadata(extra, [], pre="gpt-2"))
    assert default.bos_token_id == default.eos_token_id == 11


def test_eos_added_when_the_file_asks() -> None:
    extra = [("<e>", CONTROL)]
    tok = tokenizer_from_gguf_metadata(
        bpe_metadata(extra, [], eos_token_id=256, add_eos_token=True)
    )
    assert tok.encode("a") == [byte_id("a"), 256]
    assert tok.encode("a", add_special=False) == [byte_id("a")]


def test_end_of_generation_tokens_found_by_text() -> None:
    # <|im_end|> and <|fim_pad|> end generation and become control tokens even if typed normal.
    extra = [("<|im_end|>", NORMAL), ("<|fim_pad|>", NORMAL), ("<|im_start|>", CONTROL)]
    tok = tokenizer_from_gguf_metadata(bpe_metadata(extra, [], eos_token_id=258))
    assert tok.eos_token_ids == {256, 257, 258}
    assert tok.eos_token_id == 258
    assert tok.is_special(256) and tok.is_special(257)
    assert tok.encode("<|im_end|>") == [256]


def test_decode_and_special_tokens() -> None:
    extra = [("Ġhello", NORMAL), ("<|im_start|>", CONTROL), ("<x>", USER_DEFINED)]
    tok = tokenizer_from_gguf_metadata(bpe_metadata(extra, []))
    assert tok.id_to_piece(256) == "Ġhello"
    assert tok.token_bytes(256) == b" hello"
    assert tok.decode([257, 256, 258]) == "<|im_start|> hello<x>"
    assert tok.decode([257, 256, 258], skip_special_tokens=True) == " hello<x>"
    assert tok.is_special(257) and not tok.is_special(258)


def test_piece_outside_the_byte_alphabet_is_marked() -> None:
    tok = tokenizer_from_gguf_metadata(bpe_metadata([("aΩ", NORMAL)], []))
    assert tok.token_bytes(256) == b"a[UNK_BYTE_0xcea9a\xce\xa9]"


def test_bpe_long_inputs() -> None:
    # A 20k-character word (one heap of merges) and a long text of short words.
    tok = tokenizer_from_gguf_metadata(bpe_metadata([("aa", NORMAL)], ["a a"]))
    assert len(tok.encode("a" * 20_000)) == 10_000
    assert tok.decode(tok.encode("xy " * 3_000)) == "xy " * 3_000


# -- SentencePiece ------------------------------------------------------------------------------


SPM_PIECES = [
    ("▁", -1.0, NORMAL),
    ("a", -2.0, NORMAL),
    ("b", -2.0, NORMAL),
    ("c", -2.0, NORMAL),
    ("ab", -3.0, NORMAL),
    ("bc", -1.5, NORMAL),
    ("▁a", -0.5, NORMAL),
    ("▁ab", -0.2, NORMAL),
    ("<ctl>", 0.0, CONTROL),
]


def spm_id(text: str) -> int:
    return 3 + 256 + [p for p, _, _ in SPM_PIECES].index(text)


def test_spm_merges_highest_score_first() -> None:
    tok = tokenizer_from_gguf_metadata(spm_metadata(SPM_PIECES, add_space_prefix=False))
    # "abc": (b c) scores -1.5 > (a b) -3.0, so "a" + "bc".
    assert tok.encode("abc", add_special=False) == [spm_id("a"), spm_id("bc")]
    # "▁ab": (▁ a) -0.5 first, then (▁a b) -> "▁ab".
    assert tok.encode(" ab", add_special=False) == [spm_id("▁ab")]


def test_spm_space_prefix_and_bos_defaults() -> None:
    tok = tokenizer_from_gguf_metadata(spm_metadata(SPM_PIECES))
    # llama.cpp's SPM defaults: BOS id 1 added, a space put before the text.
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2
    assert tok.encode("ab") == [1, spm_id("▁ab")]
    # ... and again after a special token.
    assert tok.encode("ab<ctl>ab") == [1, spm_id("▁ab"), spm_id("<ctl>"), spm_id("▁ab")]
    no_prefix = tokenizer_from_gguf_metadata(
        spm_metadata(SPM_PIECES, add_space_prefix=False, add_bos_token=False)
    )
    assert no_prefix.encode("ab") == [spm_id("ab")]


def test_spm_byte_fallback_and_decode() -> None:
    tok = tokenizer_from_gguf_metadata(spm_metadata(SPM_PIECES, add_space_prefix=False))
    ids = tok.encode("aé", add_special=False)
    assert ids == [spm_id("a"), 3 + 0xC3, 3 + 0xA9]
    assert tok.decode(ids) == "aé"
    assert tok.token_bytes(spm_id("▁ab")) == b" ab"
    assert tok.decode([1, spm_id("▁ab")], skip_special_tokens=True) == " ab"


def test_spm_long_text() -> None:
    tok = tokenizer_from_gguf_metadata(spm_metadata(SPM_PIECES, add_space_prefix=False))
    text = "ab abc " * 2_000
    assert tok.decode(tok.encode(text, add_special=False)) == text


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokenizer.ggml.model": "bert"}, "unsupported tokenizer model 'bert'"),
        ({"tokenizer.ggml.pre": "mystery"}, "unsupported BPE pre-tokenizer type 'mystery'"),
        ({"tokenizer.ggml.tokens": None}, "no tokenizer.ggml.tokens"),
        ({"tokenizer.ggml.merges": None}, "no tokenizer.ggml.merges"),
        ({"tokenizer.ggml.eos_token_id": 10**6, "tokenizer.ggml.tokens": list("abc"),
          "tokenizer.ggml.token_type": [1, 1, 1], "tokenizer.ggml.add_eos_token": True}, "EOS"),
    ],
)  # fmt: skip
def test_bad_metadata_is_a_one_line_tokenizer_error(change: dict[str, Any], message: str) -> None:
    metadata = bpe_metadata([], [])
    for key, value in change.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    with pytest.raises(TokenizerError, match=message) as caught:
        tokenizer_from_gguf_metadata(metadata)
    assert "\n" not in str(caught.value)


def test_out_of_range_ids_are_tokenizer_errors() -> None:
    tok = tokenizer_from_gguf_metadata(bpe_metadata([], []))
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([10**6])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.id_to_piece(-1)
