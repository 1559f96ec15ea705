"""GGUF tokenizers on the two real anchor models against llama.cpp and independent oracles.

- every reference prompt tokenizes to llama.cpp's ids, every reference completion decodes to
  llama.cpp's text, the GGUF chat template renders llama.cpp's prompt byte for byte;
- tricky strings (emoji, CJK, spacing, special-token text) tokenize to the ids of independent
  implementations: for SmolLM2 the `tokenizers` library fed the same vocab and merges with the
  pre-tokenizer of SmolLM2's tokenizer.json, for Gemma 3 the ids produced by transformers'
  GGUF conversion (recorded below), and round-trip through decode;
- streaming detokenization equals decode() on real vocabularies.

Needs only the GGUF files' metadata; the models are pulled through Ember's library.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from ember.tokenizer.base import Tokenizer
from ember.tokenizer.chat_template import render_chat_template
from ember.tokenizer.detokenizer import IncrementalDetokenizer
from ember.tokenizer.gguf_tokenizer import tokenizer_from_gguf_metadata
from tests.conftest import real_model_path

pytestmark = pytest.mark.parity

REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
FILES = {
    "smollm2-135m-instruct-q4_1": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma-3-270m-q4_k_m": "gemma-3-270m-q4_k_m.gguf",
}
SMOLLM2 = "smollm2-135m-instruct-q4_1"
GEMMA3 = "gemma-3-270m-q4_k_m"

TRICKY = [
    "Hello, world! 😀 🎉👍🏽",
    "日本語のテキストと中文混合 한국어",
    "multiple   spaces\tand\ttabs\n\n\nnewlines\r\n",
    "  leading and trailing  ",
    "Ünïcödé àccents, ß, ﬁ ligature, Ω≈ç√∫",
    "Numbers: 1234567890 3.14159 1,000,000",
    "It's, you're, we'll, I'd, they've, I'M",
    "def f(x):\n    return x**2  # comment\n",
    "Arabic مرحبا and Hindi नमस्ते",
    "\u00a0nbsp\u2003emspace\u3000ideographic",
    "🏳️‍🌈 zero width joiner \u200d and \u200b",
    " ",
    "<0x41> is not a byte here",
]

# Gemma 3 ids from transformers' GGUF tokenizer conversion (BOS included).
GEMMA3_EXPECTED = {
    TRICKY[0]: [2, 9259, 236764, 1902, 236888, 163543, 204906, 240493, 242713],
    TRICKY[1]: [2, 94951, 236945, 95830, 237032, 55041, 60478, 50413, 237430],
    TRICKY[2]: [2, 43819, 139, 35220, 255968, 624, 255968, 39218, 109, 208697, 251, 107],
    TRICKY[3]: [2, 138, 26016, 532, 45330, 138],
    TRICKY[4]: [
        2, 238194, 236749, 238527, 236755, 55515, 236859, 1608, 767, 876, 236764, 114881,
        236764, 97940, 107109, 236764, 76858, 240443, 236999, 239176, 240842,
    ],
    TRICKY[5]: [
        2, 37091, 236787, 236743, 236770, 236778, 236800, 236812, 236810, 236825, 236832,
        236828, 236819, 236771, 236743, 236800, 236761, 236770, 236812, 236770, 236810, 236819,
        236743, 236770, 236764, 236771, 236771, 236771, 236764, 236771, 236771, 236771,
    ],
    TRICKY[6]: [
        2, 1509, 236789, 236751, 236764, 611, 236789, 500, 236764, 692, 236789, 859, 236764,
        564, 236789, 236753, 236764, 901, 236789, 560, 236764, 564, 236789, 236792,
    ],
    TRICKY[7]: [2, 2063, 517, 236769, 236781, 1473, 107, 140, 2060, 1123, 1018, 236778, 138,
                236865, 5739, 107],
    TRICKY[8]: [2, 101293, 150423, 532, 18642, 173040],
    TRICKY[9]: [2, 432, 398, 11539, 464, 366, 369, 581, 5780, 465, 366, 366, 754, 9814],
    TRICKY[10]: [2, 248177, 238178, 237243, 243712, 5743, 2962, 6154, 497, 205730, 532, 36504],
    TRICKY[11]: [2, 236743],
    TRICKY[12]: [2, 236820, 236771, 236781, 236812, 236770, 236813, 563, 711, 496, 16812, 1590],
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n": [
        2, 105, 2364, 107, 10979, 993, 106, 107, 105, 4368, 107,
    ],
}  # fmt: skip

# Characters for random strings: ASCII classes, accents, scripts, emoji, odd spaces, specials.
RANDOM_POOL = (
    list("aAbBzZ 0123456789 \n\n\t\r.,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`")
    + list("éèüßñçøåæœ日本語中文한국어Россияعربيहिन्दी😀🎉👍🏽❤️\u00a0\u2003\u200b\u3000₹€£¥©®™°±×÷")
    + ["'s", "'ll", "'RE", " the", " The", "  ", "    ", "\r\n", "...", "1,000", "3.14"]
)


def _random_strings(seed: int, count: int, extra: list[str]) -> list[str]:
    rng = random.Random(seed)
    pool = RANDOM_POOL + extra
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(count)]


def _metadata(key: str) -> dict[str, Any]:
    from ember.loader.gguf_file import read_gguf

    path = real_model_path(key)
    return read_gguf(path, with_tensors=False).metadata


def _reference(name: str) -> dict[str, Any]:
    path = REFERENCE_DIR / name
    if not path.is_file():
        pytest.skip(f"llama.cpp reference {path} is not available")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def smollm2_metadata() -> dict[str, Any]:
    return _metadata(SMOLLM2)


@pytest.fixture(scope="module")
def gemma3_metadata() -> dict[str, Any]:
    return _metadata(GEMMA3)


@pytest.fixture(scope="module")
def smollm2(smollm2_metadata: dict[str, Any]) -> Tokenizer:
    return tokenizer_from_gguf_metadata(smollm2_metadata)


@pytest.fixture(scope="module")
def gemma3(gemma3_metadata: dict[str, Any]) -> Tokenizer:
    return tokenizer_from_gguf_metadata(gemma3_metadata)


@pytest.fixture(params=[SMOLLM2, GEMMA3])
def model(request: pytest.FixtureRequest) -> tuple[str, Tokenizer]:
    fixture = "smollm2" if request.param == SMOLLM2 else "gemma3"
    return request.param, request.getfixturevalue(fixture)


@pytest.fixture(scope="module")
def smollm2_oracle(smollm2_metadata: dict[str, Any]) -> Any:
    """SmolLM2's tokenizer.json pipeline rebuilt with the `tokenizers` library."""
    from tokenizers import AddedToken, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers.models import BPE

    md = smollm2_metadata
    tokens = md["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    oracle = RustTokenizer(BPE({t: i for i, t in enumerate(tokens)}, merges))
    oracle.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    controls = [
        t for t, kind in zip(tokens, md["tokenizer.ggml.token_type"], strict=True) if kind == 3
    ]
    oracle.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in controls])
    return oracle


# -- llama.cpp reference outputs -----------------------------------------------------------


def test_reference_prompts_tokenize_to_llamacpp_ids(model: tuple[str, Tokenizer]) -> None:
    key, tokenizer = model
    cases = _reference("llamacpp-greedy.json")["models"][key]
    assert len(cases) == 8
    for case in cases:
        assert tokenizer.encode(case["prompt"]) == case["prompt_tokens"], case["prompt"]


def test_reference_completions_decode_to_llamacpp_text(model: tuple[str, Tokenizer]) -> None:
    key, tokenizer = model
    for case in _reference("llamacpp-greedy.json")["models"][key]:
        assert tokenizer.decode(case["completion_tokens"]) == case["completion"]


def test_bos_and_end_of_generation_like_llamacpp(smollm2: Tokenizer, gemma3: Tokenizer) -> None:
    # SmolLM2 (add_bos_token false): no BOS added; <|endoftext|>, <|im_end|> and the FIM token
    # <reponame> end generation. Gemma 3: BOS added; <eos>, <end_of_turn> and </s> end it.
    assert smollm2.encode("Hi")[0] != smollm2.bos_token_id
    assert smollm2.eos_token_ids == {0, 2, 4}
    assert (smollm2.bos_token, smollm2.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert gemma3.encode("Hi")[0] == gemma3.bos_token_id == 2
    assert gemma3.encode("Hi", add_special=False)[0] != 2
    assert gemma3.eos_token_ids == {1, 106, 212}
    assert (gemma3.bos_token, gemma3.eos_token) == ("<bos>", "<eos>")
    assert gemma3.chat_template is None  # this GGUF carries none


def test_chat_template_renders_llamacpp_prompt(smollm2: Tokenizer) -> None:
    reference = _reference("llamacpp-chat.json")
    assert reference["model"] == SMOLLM2
    assert smollm2.chat_template
    for chat in reference["chats"]:
        rendered = render_chat_template(
            smollm2.chat_template,
            chat["messages"],
            add_generation_prompt=True,
            bos_token=smollm2.bos_token,
            eos_token=smollm2.eos_token,
        )
        assert rendered == chat["rendered_prompt"]
        assert len(smollm2.encode(rendered)) == chat["usage"]["prompt_tokens"]


# -- independent oracles on tricky strings ------------------------------------------------


def test_smollm2_matches_tokenizers_library(smollm2: Tokenizer, smollm2_oracle: Any) -> None:
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<reponame>"]
    chat = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    for text in [*TRICKY, chat, *_random_strings(7, 500, specials)]:
        expected = smollm2_oracle.encode(text, add_special_tokens=False).ids
        assert smollm2.encode(text) == expected, text


def test_gemma3_matches_transformers_conversion(gemma3: Tokenizer) -> None:
    for text, expected in GEMMA3_EXPECTED.items():
        assert gemma3.encode(text) == expected, text


def test_special_token_text_is_plain_text_without_parse_special(
    smollm2: Tokenizer, gemma3: Tokenizer
) -> None:
    text = "<|im_start|>user<|im_end|>"
    assert smollm2.encode(text) == [1, 4093, 2]
    plain = smollm2.encode(text, parse_special=False)
    assert 1 not in plain and 2 not in plain
    assert smollm2.decode(plain) == text
    # Gemma's user-defined tokens (whitespace runs, HTML tags) match even without parse_special.
    assert 105 not in gemma3.encode("<start_of_turn>", add_special=False, parse_special=False)
    assert gemma3.encode("<b>", add_special=False, parse_special=False) == [200]


def test_round_trips(model: tuple[str, Tokenizer]) -> None:
    key, tokenizer = model
    extra = ["<|im_start|>", "<|im_end|>"] if key == SMOLLM2 else ["<start_of_turn>", "<b>"]
    for text in [*TRICKY, *_random_strings(11, 300, extra)]:
        ids = tokenizer.encode(text, add_special=False)
        assert tokenizer.decode(ids) == text


def test_skip_special_tokens_drops_control_tokens(gemma3: Tokenizer) -> None:
    ids = gemma3.encode("<start_of_turn>user\nHi<end_of_turn>")
    assert gemma3.decode(ids) == "<bos><start_of_turn>user\nHi<end_of_turn>"
    assert gemma3.decode(ids, skip_special_tokens=True) == "user\nHi"


def test_byte_fallback_pieces(gemma3: Tokenizer) -> None:
    ids = gemma3.encode("\u00a0", add_special=False)  # no token for U+00A0: two byte tokens
    assert [gemma3.id_to_piece(i) for i in ids] == ["<0xC2>", "<0xA0>"]
    assert [gemma3.token_bytes(i) for i in ids] == [b"\xc2", b"\xa0"]


# -- streaming ------------------------------------------------------------------------------


def _stream(tokenizer: Tokenizer, ids: list[int], skip_special: bool = False) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special)
    return [detokenizer.add(i) for i in ids] + [detokenizer.flush()]


def _is_whole_text(chunk: str) -> bool:
    return "\ufffd" not in chunk


def test_streaming_equals_decode_on_real_text(model: tuple[str, Tokenizer]) -> None:
    _, tokenizer = model
    for text in TRICKY:
        ids = tokenizer.encode(text)
        chunks = _stream(tokenizer, ids)
        assert "".join(chunks) == tokenizer.decode(ids)
        assert all(_is_whole_text(c) for c in chunks)  # no character was ever split
        skipped = _stream(tokenizer, ids, skip_special=True)
        assert "".join(skipped) == tokenizer.decode(ids, skip_special_tokens=True)


def test_streaming_equals_decode_on_random_ids(model: tuple[str, Tokenizer]) -> None:
    _, tokenizer = model
    rng = random.Random(3)
    # Byte pieces that split multi-byte characters are the interesting ones: draw many of them.
    partial = [i for i in range(min(tokenizer.vocab_size, 2000)) if _splits_char(tokenizer, i)]
    assert partial
    for _ in range(200):
        ids = [
            rng.choice(partial) if rng.random() < 0.6 else rng.randrange(tokenizer.vocab_size)
            for _ in range(rng.randint(1, 30))
        ]
        assert "".join(_stream(tokenizer, ids)) == tokenizer.decode(ids)


def _splits_char(tokenizer: Tokenizer, token_id: int) -> bool:
    piece = tokenizer.token_bytes(token_id)
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
