"""The llguidance backend.

- build: StructuredOutputs -> llguidance grammar text (llguidance_lark.py; GBNF through
  gbnf_lark.py), validated without the tokenizer;
- prepare: the vocabulary as an LLTokenizer (token bytes as in vocab.py; special tokens get
  llguidance's b"\\xff" marker, so they never match text; the stop tokens are its EOS tokens);
- compile: one LLMatcher built from the grammar (llguidance's lexer and parser set-up);
- new_matcher: a copy of that matcher per sequence, behind Ember's matcher interface.

llguidance computes masks lazily, token by token, instead of pre-computing them per grammar as
xgrammar does: compiles are cheap, each mask costs a little more.
"""

from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING, Any

import torch

from ember.errors import RequestError
from ember.sampling_params import StructuredOutputs
from ember.structured import llguidance_lark as lark
from ember.structured.backend import GrammarBackend, GrammarMatcher, Vocabulary
from ember.structured.gbnf_lark import gbnf_to_lark
from ember.structured.grammar import error_detail
from ember.structured.vocab import grammar_vocab

if TYPE_CHECKING:
    import llguidance

_CACHED_SPECS = 256
# a Lark position ("at 1(8): ") points into the grammar text Ember generated, not the user's
_LARK_POSITION = re.compile(r"^at \d+\(\d+\):\s*")
_SPECIAL_MARK = b"\xff"
"""llguidance's prefix for special tokens: text never matches them, a grammar may name them."""


class LLGuidanceBackend(GrammarBackend):
    name = "llguidance"
    _tokenizer: llguidance.LLTokenizer | None = None

    @staticmethod
    def build(spec: StructuredOutputs) -> str:
        return _grammar(spec.kind, spec.spec, spec.any_whitespace, spec.strict)

    def prepare(self) -> None:
        self._get_tokenizer()

    def compile(self, grammar: Any) -> llguidance.LLMatcher:
        import llguidance

        tokenizer = self._get_tokenizer()
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=_limits())
        if matcher.is_error():
            raise RuntimeError(_detail(matcher.get_error()))
        return matcher

    def new_matcher(self, compiled: Any) -> GrammarMatcher:
        return LLGuidanceMatcher(compiled.deep_copy(), frozenset(self.vocab.stop_token_ids))

    def _get_tokenizer(self) -> llguidance.LLTokenizer:
        # Only the one compile thread gets here, so building the tokenizer needs no lock.
        if self._tokenizer is None:
            self._tokenizer = ll_tokenizer(self.vocab)
        return self._tokenizer


class LLGuidanceMatcher:
    """An LLMatcher with the interface of xgrammar's GrammarMatcher that GrammarState uses."""

    def __init__(self, matcher: llguidance.LLMatcher, stop_token_ids: frozenset[int]) -> None:
        self._matcher = matcher
        self._stop_token_ids = stop_token_ids
        self._terminated = False

    def accept_token(self, token_id: int) -> bool:
        if not self._matcher.consume_token(token_id):
            return False
        # llguidance accepts a stop token only where the grammar may end
        self._terminated = token_id in self._stop_token_ids
        return True

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        row = bitmask[index]
        if row.dtype != torch.int32 or row.device.type != "cpu" or not row.is_contiguous():
            raise ValueError("a token bitmask row must be contiguous int32 on the CPU")
        # llguidance checks the size against its vocabulary before it writes
        self._matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        if self._matcher.is_error():
            raise RuntimeError(self._matcher.get_error())

    def is_terminated(self) -> bool:
        return self._terminated

    def is_completed(self) -> bool:
        return self._matcher.is_accepting()


class _TokenizerView:
    """What llguidance.TokenizerWrapper reads of a tokenizer: token bytes, special and end
    tokens, and a callable that tokenizes text (used for forced text, never for masks)."""

    def __init__(self, vocab: Vocabulary) -> None:
        tokenizer = vocab.tokenizer
        tokens = grammar_vocab(tokenizer, vocab.vocab_size, special=_SPECIAL_MARK)
        self.special_token_ids = [i for i in range(len(tokens)) if tokenizer.is_special(i)]
        tokens += [b""] * (vocab.vocab_size - len(tokens))  # padding ids: never allowed
        self.tokens = tokens
        stops = list(vocab.stop_token_ids)
        end = stops[0] if stops else tokenizer.eos_token_id
        if end is None:
            raise RequestError("structured outputs need the model's end-of-generation token")
        self.eos_token_id = end
        self.bos_token_id = tokenizer.bos_token_id
        self._tokenizer = tokenizer

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return self._tokenizer.encode(text, add_special=False, parse_special=False)


def ll_tokenizer(vocab: Vocabulary) -> llguidance.LLTokenizer:
    """llguidance's view of the vocabulary, its EOS tokens being `vocab.stop_token_ids`."""
    import llguidance

    view = _TokenizerView(vocab)
    stops = list(vocab.stop_token_ids) or [view.eos_token_id]
    return llguidance.LLTokenizer(
        llguidance.TokenizerWrapper(view), n_vocab=vocab.vocab_size, eos_token=stops
    )


@functools.cache
def _limits() -> llguidance.LLParserLimits:
    import llguidance

    # short errors: the verbose ones hold the parser state and the whole grammar
    return llguidance.LLParserLimits(verbose_errors=False)


@functools.lru_cache(maxsize=_CACHED_SPECS)
def _grammar(kind: str, text: str, any_whitespace: bool, strict: bool) -> str:
    import llguidance

    try:
        grammar = _translate(kind, text, any_whitespace, strict)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, None, limits=_limits()
        )
    except RequestError:
        raise
    except Exception as exc:  # noqa: BLE001 - the converters raise assorted errors
        raise RequestError(f"structured_outputs.{kind} cannot be used: {_detail(exc)}") from None
    if failed:
        detail = _detail(messages[0] if messages else "invalid grammar")
        raise RequestError(f"structured_outputs.{kind} cannot be used: {detail}")
    return grammar


def _detail(error: BaseException | str) -> str:
    """One line of an llguidance error: its first line, completed by the "error: ..." line of a
    regex error whose first line only announces it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return error_detail(error)
    first = _LARK_POSITION.sub("", lines[0])
    if first.endswith(":"):
        reason = next((line for line in lines[1:] if line.startswith("error:")), None)
        if reason is not None:
            first = f"{first} {reason.removeprefix('error:').strip()}"
    return error_detail(first)


def _translate(kind: str, text: str, any_whitespace: bool, strict: bool) -> str:
    import llguidance

    from_lark = llguidance.LLMatcher.grammar_from_lark
    layout = lark.json_options(any_whitespace)
    if kind == "json":
        schema = json.loads(text)
        if strict:
            schema = lark.strict_schema(schema)
        return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=layout)
    if kind == "json_object":
        # Any object: additional properties are the point, so never strict.
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=layout)
    if kind == "regex":
        return from_lark("start: " + lark.regex_terminal(text))
    if kind == "grammar":
        return from_lark(gbnf_to_lark(text))
    if kind == "choice":
        return from_lark(lark.choice_lark(json.loads(text)))
    if kind == "structural_tag":
        # xgrammar lays out a structural tag's JSON with any whitespace whatever any_whitespace
        # says; so does this backend, so that a tool call comes out the same with either.
        return lark.structural_tag_grammar(text, lark.json_options(True), strict)
    raise RequestError(f"structured_outputs: unknown kind {kind!r}")
