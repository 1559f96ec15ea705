"""The structured-output machinery on a byte vocabulary: the bitmask apply against its
references, and both grammar backends held to the same answers, kind by kind.

Each backend test runs once per installed grammar library (a missing one is skipped, with the
reason); tests/engine/test_structured.py runs the same backends through the engine.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

import pytest
import torch

from ember.errors import RequestError
from ember.sampling_params import StructuredOutputs
from ember.structured import GrammarMasker, GrammarState, StructuredCompiler
from ember.structured.backend import BACKEND_NAMES, backend_class
from ember.structured.bitmask import apply_bitmask_inplace, stop_only_row, unpack_bitmask
from ember.structured.grammar import check_structured_outputs
from ember.structured.llguidance_lark import strict_schema
from ember.tokenizer.base import Tokenizer

EOS, EOT = 256, 257
MERGES = [b"ab", b'{"', b'": ', b", ", b"red", b"green", b"<tool_call>", b"\n</tool_call>"]
PADDING = 5


class ByteTokenizer(Tokenizer):
    """Every byte, two end tokens, then a few merged pieces (so masks hold multi-byte tokens)."""

    def __init__(self) -> None:
        self.pieces = [bytes([b]) for b in range(256)] + [b"<eos>", b"<eot>", *MERGES]

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return list(text.encode())

    def token_bytes(self, token_id: int) -> bytes:
        return self.pieces[token_id]

    def id_to_piece(self, token_id: int) -> str:
        return self.pieces[token_id].decode("latin-1")

    def is_special(self, token_id: int) -> bool:
        return token_id in (EOS, EOT)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def bos_token_id(self) -> int | None:
        return None

    @property
    def eos_token_id(self) -> int | None:
        return EOS

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({EOS, EOT})

    @property
    def chat_template(self) -> str | None:
        return None


TOKENIZER = ByteTokenizer()
VOCAB = TOKENIZER.vocab_size + PADDING  # logits wider than the tokenizer, as models pad them

BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            importlib.util.find_spec(name) is None, reason=f"{name} is not installed"
        ),
    )
    for name in BACKEND_NAMES
]


@pytest.fixture(params=BACKENDS)
def compiler(request: pytest.FixtureRequest) -> StructuredCompiler:
    return StructuredCompiler(
        TOKENIZER, VOCAB, TOKENIZER.eos_token_ids, grammar_backend=request.param
    )


def allowed(state: GrammarState) -> set[int]:
    bitmask = torch.full((1, state.bitmask_width), -1, dtype=torch.int32)
    state.fill_mask(bitmask, 0)
    assert state.error is None, state.error
    return set(unpack_bitmask(bitmask, VOCAB)[0].nonzero().flatten().tolist())


def walk(compiler: StructuredCompiler, spec: StructuredOutputs, text: str) -> tuple[bool, bool]:
    """(every byte of `text` was in its mask, the grammar ended right after it - by itself or on
    a stop token that was then allowed)."""
    state = compiler.compile(spec).new_state()
    for byte in text.encode():
        if byte not in allowed(state) or state.ended:
            return False, False
        state.accept(byte)
    if state.ended:
        return True, True
    if EOS not in allowed(state):
        return True, False
    state.accept(EOS)
    return True, state.ended


def matches(compiler: StructuredCompiler, spec: StructuredOutputs, text: str) -> bool:
    return walk(compiler, spec, text) == (True, True)


# -- the bitmask ----------------------------------------------------------------------------------


def reference_apply(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int], vocab_size: int
) -> None:
    for row in rows:
        for token in range(logits.shape[1]):
            word = int(bitmask[row, token // 32]) if token < vocab_size else 0
            if not (word >> (token % 32)) & 1:
                logits[row, token] = float("-inf")


@pytest.mark.parametrize("vocab_size, columns", [(70, 70), (64, 64), (61, 75), (100, 90)])
def test_bitmask_apply_matches_the_reference(vocab_size: int, columns: int) -> None:
    generator = torch.Generator().manual_seed(vocab_size + columns)
    width = (vocab_size + 31) // 32
    words = torch.randint(-(2**31), 2**31, (4, width), generator=generator, dtype=torch.int64)
    bitmask = words.to(torch.int32)
    bitmask[1, 0] = -(2**31)  # only bit 31 set: the sign bit must count as one token
    logits = torch.randn(4, columns, generator=generator)
    expected = logits.clone()
    rows = [0, 1, 3]
    reference_apply(expected, bitmask, rows, vocab_size)
    apply_bitmask_inplace(logits, bitmask, rows, vocab_size)
    assert torch.equal(logits, expected)  # row 2 untouched, padding columns -inf


def test_bitmask_apply_matches_xgrammar() -> None:
    xgr = pytest.importorskip("xgrammar")
    generator = torch.Generator().manual_seed(7)
    vocab_size = 1000
    bitmask = torch.randint(
        -(2**31), 2**31, (3, (vocab_size + 31) // 32), generator=generator, dtype=torch.int64
    ).to(torch.int32)
    logits = torch.randn(3, vocab_size, generator=generator)
    expected = logits.clone()
    xgr.apply_token_bitmask_inplace(expected, bitmask, vocab_size=vocab_size, indices=[0, 2])
    apply_bitmask_inplace(logits, bitmask, [0, 2], vocab_size)
    assert torch.equal(logits, expected)


def test_stop_only_row_round_trips() -> None:
    row = stop_only_row([0, 31, 32, 95], 100)
    assert row.dtype == torch.int32 and row.shape == (4,)
    assert unpack_bitmask(row[None], 100)[0].nonzero().flatten().tolist() == [0, 31, 32, 95]


# -- the backends, kind by kind ------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.mark.parametrize(
    "fields, text, expected",
    [
        ({"json": PERSON, "any_whitespace": False}, '{"name": "Ann", "age": 31}', True),
        ({"json": PERSON, "any_whitespace": False}, '{"name":"Ann","age":31}', False),
        ({"json": PERSON}, '{ "name" : "Ann" ,\n"age":31}', True),
        ({"json": PERSON, "any_whitespace": False}, '{"name": "Ann", "age": 31, "x": 1}', False),
        (
            {"json": PERSON, "any_whitespace": False, "strict": False},
            '{"name": "Ann", "age": 31, "x": 1}',
            True,
        ),
        ({"json": PERSON, "any_whitespace": False}, '{"name": "Annabelle!", "age": 31}', False),
        ({"json_object": True}, '{"a": [1, {"b": null}], "c": "d"}', True),
        ({"json_object": True}, "[1, 2]", False),
        ({"regex": r"\d{3}-\d{4}"}, "555-1234", True),
        ({"regex": r"\d{3}"}, "٣٣٣", False),  # \d is ASCII, as in xgrammar
        ({"regex": "(yes|no): [a-z]{3,8}"}, "no: maybe", True),
        ({"regex": "[a-z]{1,8}"}, "abcdefghi", False),
        ({"grammar": 'root ::= "a" [0-9]+ ("b" | "c")'}, "a12c", True),
        ({"grammar": 'root ::= "a" [0-9]+ ("b" | "c")'}, "a12", False),
        ({"grammar": 'root ::= ""'}, "", True),
        # GBNF is a grammar over characters: no greedy lexeme may swallow what follows
        ({"grammar": 'root ::= [a-z]+ "ing"'}, "singing", True),
        ({"grammar": "root ::= word word\nword ::= [a-z]+"}, "ab", True),
        ({"grammar": 'root ::= "a"\n     | "b"  # comment\n'}, "b", True),
        ({"grammar": 'root ::= my-Rule\nmy-Rule ::= "\\u00e9" [^a] [\\x41-\\x43]'}, "ézB", True),
        ({"grammar": 'root ::= [^"\\n]{2,} "\\""'}, 'x/y"', True),
        ({"choice": ["red", "green", "blue"]}, "green", True),
        ({"choice": ["red", "green", "blue"]}, "gre", False),
    ],
)
def test_each_kind_accepts_and_refuses_the_same_texts(
    compiler: StructuredCompiler, fields: dict[str, Any], text: str, expected: bool
) -> None:
    assert matches(compiler, StructuredOutputs(**fields), text) is expected


def test_json_keywords_a_library_does_not_implement_are_ignored_not_refused(
    compiler: StructuredCompiler,
) -> None:
    schema = {
        "type": "object",
        "title": "Pydantic puts titles everywhere",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "when": {"type": "string", "format": "no-such-format"},
        },
        "required": ["tags"],
        "dependentRequired": {"when": ["tags"]},
    }
    assert matches(compiler, StructuredOutputs(json=schema, any_whitespace=False), '{"tags": []}')
    with pytest.raises(RequestError, match="^structured_outputs.json cannot be used: "):
        compiler.compile(StructuredOutputs(json={"type": "objekt"}))


def test_choice_escapes_quotes_backslashes_and_control_characters(
    compiler: StructuredCompiler,
) -> None:
    choices = ['say "hi"', "back\\slash", "tab\there", "bell\x07a", "café ☕"]
    spec = StructuredOutputs(choice=choices)
    for choice in choices:
        assert matches(compiler, spec, choice), choice
    assert not matches(compiler, spec, "bell\x07b")


def test_a_complete_grammar_ends_without_a_stop_token_and_masks_match(
    compiler: StructuredCompiler,
) -> None:
    state = compiler.compile(StructuredOutputs(choice=["red", "green"])).new_state()
    first = allowed(state)
    assert {ord("r"), ord("g"), 256 + 2 + MERGES.index(b"red")} <= first
    assert not first & {EOS, EOT} and max(first) < TOKENIZER.vocab_size
    for byte in b"red":
        assert not state.ended
        state.accept(byte)
    assert state.ended and state.error is None


def test_an_extensible_match_allows_both_stop_tokens_then_ends_on_one(
    compiler: StructuredCompiler,
) -> None:
    state = compiler.compile(StructuredOutputs(regex="[a-c]{1,3}")).new_state()
    assert ord("a") in allowed(state)
    state.accept(ord("a"))
    assert not state.ended
    mask = allowed(state)
    assert {EOS, EOT, ord("b")} <= mask and not state.must_stop
    state.accept(EOT)
    assert state.ended


def test_the_empty_grammar_must_stop_at_once(compiler: StructuredCompiler) -> None:
    state = compiler.compile(StructuredOutputs(grammar='root ::= ""')).new_state()
    assert allowed(state) == {EOS, EOT} and state.must_stop


def test_a_refused_token_is_a_one_line_error(compiler: StructuredCompiler) -> None:
    state = compiler.compile(StructuredOutputs(regex="[a-c]+")).new_state()
    allowed(state)
    state.accept(ord("z"))
    assert state.error is not None and "\n" not in state.error and "122" in state.error


def test_padding_columns_are_never_allowed(compiler: StructuredCompiler) -> None:
    pending = compiler.compile(StructuredOutputs(regex="[a-z]*"))
    masks = GrammarMasker().start([pending.new_state(), None])
    assert masks is not None
    logits = torch.zeros(2, VOCAB)
    masks.apply(logits)
    allowed_ids = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    merged = [256 + 2 + MERGES.index(piece) for piece in (b"ab", b"red", b"green")]
    assert allowed_ids == [*range(ord("a"), ord("z") + 1), EOS, EOT, *merged]
    assert torch.equal(logits[1], torch.zeros(VOCAB))  # an unconstrained row is left alone


# -- structural tags (the server's forced tool calls) ---------------------------------------------

ARGUMENTS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CALL_TAG = {
    "type": "tag",
    "begin": '<tool_call>\n{"name": "weather", "arguments": ',
    "content": {"type": "json_schema", "json_schema": ARGUMENTS},
    "end": "}\n</tool_call>",
}
CALL = '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def structural(fmt: dict[str, Any]) -> StructuredOutputs:
    return StructuredOutputs(structural_tag={"type": "structural_tag", "format": fmt})


SEPARATED: list[tuple[dict[str, Any], str, bool]] = [
    ({"at_least_one": True, "stop_after_first": True}, CALL, True),
    ({"at_least_one": True, "stop_after_first": True}, CALL + "\n" + CALL, False),
    ({"at_least_one": True}, CALL + "\n" + CALL, True),
    ({"at_least_one": True}, "", False),
    ({}, "", True),
]
TRIGGERED: list[tuple[dict[str, Any], str, bool]] = [
    ({}, "Hello " + CALL + " bye", True),
    ({}, "Hello <tool_call> oops", False),
    ({"excludes": ["<think>"]}, "Hello <think>", False),
    ({"stop_after_first": True}, "Hi " + CALL, True),
    ({"stop_after_first": True}, CALL + " bye", False),
    ({"at_least_one": True}, "Hi " + CALL, False),
    ({"at_least_one": True}, CALL + " then " + CALL, True),
]
ANY_TEXT = {"type": "any_text"}
STRUCTURAL_CASES: list[tuple[dict[str, Any], str, bool]] = [
    (CALL_TAG, CALL, True),
    (CALL_TAG, CALL.replace("Paris", 'Paris", "x": "1'), False),  # strict arguments
    (CALL_TAG, "Sure. " + CALL, False),
    *[
        ({"type": "tags_with_separator", "tags": [CALL_TAG], "separator": "\n", **opts}, text, ok)
        for opts, text, ok in SEPARATED
    ],
    *[
        (
            {"type": "triggered_tags", "triggers": ["<tool_call>"], "tags": [CALL_TAG], **opts},
            text,
            ok,
        )
        for opts, text, ok in TRIGGERED
    ],
    (
        {"type": "tag", "begin": "<a>", "content": ANY_TEXT, "end": ["</a>", "!"]},
        "<a>x y</a>",
        True,
    ),
    ({"type": "tag", "begin": "<a>", "content": ANY_TEXT, "end": "</a>"}, "<a>x</a>y", False),
    (
        {
            "type": "sequence",
            "elements": [
                {"type": "const_string", "value": "n="},
                {"type": "regex", "pattern": "[0-9]+"},
                {"type": "or", "elements": [{"type": "const_string", "value": ";"}]},
            ],
        },
        "n=42;",
        True,
    ),
]


@pytest.mark.parametrize("fmt, text, expected", STRUCTURAL_CASES)
def test_structural_tags_accept_and_refuse_the_same_texts(
    compiler: StructuredCompiler, fmt: dict[str, Any], text: str, expected: bool
) -> None:
    spec = structural(fmt)
    assert matches(compiler, spec, text) is expected


def test_llguidance_refuses_structural_tags_it_cannot_express() -> None:
    pytest.importorskip("llguidance")
    token = structural(
        {
            "type": "tag",
            "begin": {"type": "token", "token": 5},
            "content": {"type": "const_string", "value": "x"},
            "end": "y",
        }
    )
    with pytest.raises(RequestError, match=r"^structured_outputs\.structural_tag .*begin"):
        check_structured_outputs(token, "llguidance")
    middle = structural(
        {
            "type": "sequence",
            "elements": [{"type": "any_text"}, {"type": "const_string", "value": "x"}],
        }
    )
    with pytest.raises(RequestError, match="any_text must end the output"):
        check_structured_outputs(middle, "llguidance")


# -- strict mode and the choice of library --------------------------------------------------------


def test_strict_schema_closes_objects_but_not_all_of_members() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}},
        "$defs": {"c": {"properties": {"d": {"type": "string"}}}},
        "allOf": [{"properties": {"e": {"type": "object"}}}],
        "prefixItems": [{"type": "string"}],
    }
    closed = strict_schema(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["$defs"]["c"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["allOf"][0]
    assert closed["allOf"][0]["properties"]["e"]["additionalProperties"] is False
    assert closed["items"] is False
    assert "additionalProperties" not in schema  # the caller's schema is not touched
    assert strict_schema({"type": "object", "additionalProperties": True}) == {
        "type": "object",
        "additionalProperties": True,
    }


def test_without_any_grammar_library_a_request_gets_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EMBER_GRAMMAR_BACKEND", raising=False)
    for library in BACKEND_NAMES:
        monkeypatch.setitem(sys.modules, library, None)  # as if it were not installed
    spec = StructuredOutputs(regex="[a-z]+y")
    with pytest.raises(RequestError, match=r"llguidance or xgrammar.*pip install llguidance"):
        check_structured_outputs(spec)
    with pytest.raises(RequestError, match="llguidance grammar backend need llguidance"):
        check_structured_outputs(spec, "llguidance")


def test_the_environment_chooses_what_auto_means(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BACKEND_NAMES:
        if importlib.util.find_spec(name) is not None:
            monkeypatch.setenv("EMBER_GRAMMAR_BACKEND", name)
            assert backend_class().name == name
    monkeypatch.setenv("EMBER_GRAMMAR_BACKEND", "outlines")
    with pytest.raises(RequestError, match="EMBER_GRAMMAR_BACKEND must be one of"):
        backend_class()
    with pytest.raises(ValueError, match="grammar_backend must be one of"):
        StructuredCompiler(TOKENIZER, VOCAB, [EOS], grammar_backend="outlines")


def test_json_text_of_a_spec_is_what_both_backends_read() -> None:
    # the spec text is the cache key; a dict and its JSON text are the same constraint
    assert StructuredOutputs(json=PERSON).spec == StructuredOutputs(json=json.dumps(PERSON)).spec
