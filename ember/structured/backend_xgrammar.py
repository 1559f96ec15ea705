"""The xgrammar backend.

- build: StructuredOutputs -> xgrammar.Grammar (EBNF / JSON schema / regex / structural tag);
- prepare: the vocabulary as an xgrammar.TokenizerInfo and one GrammarCompiler (listing a 262k
  vocabulary and pre-sorting it is not free, hence the compile thread);
- compile: xgrammar's token-mask pre-computation (its CompiledGrammar), cached by xgrammar too;
- new_matcher: xgrammar's own GrammarMatcher, which already has the interface Ember needs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ember.errors import RequestError
from ember.sampling_params import StructuredOutputs
from ember.structured.backend import GrammarBackend, GrammarMatcher
from ember.structured.grammar import error_detail
from ember.structured.vocab import grammar_vocab
from ember.tokenizer.base import Tokenizer

if TYPE_CHECKING:
    import xgrammar

_CACHED_SPECS = 256
_ANY_OBJECT_SCHEMA = '{"type": "object"}'
_XGRAMMAR_CACHE_BYTES = 256 * 1024 * 1024


class XGrammarBackend(GrammarBackend):
    name = "xgrammar"
    _compiler: xgrammar.GrammarCompiler | None = None

    @staticmethod
    def build(spec: StructuredOutputs) -> xgrammar.Grammar:
        return _grammar(spec.kind, spec.spec, spec.any_whitespace, spec.strict)

    def prepare(self) -> None:
        self._get_compiler()

    def compile(self, grammar: Any) -> xgrammar.CompiledGrammar:
        return self._get_compiler().compile_grammar(grammar)

    def new_matcher(self, compiled: Any) -> GrammarMatcher:
        import xgrammar as xgr

        return xgr.GrammarMatcher(compiled)

    def _get_compiler(self) -> xgrammar.GrammarCompiler:
        # Only the one compile thread gets here, so building the compiler needs no lock.
        if self._compiler is None:
            import xgrammar as xgr

            vocab = self.vocab
            info = tokenizer_info(vocab.tokenizer, vocab.vocab_size, vocab.stop_token_ids)
            self._compiler = xgr.GrammarCompiler(
                info, max_threads=self.compile_threads, cache_limit_bytes=_XGRAMMAR_CACHE_BYTES
            )
        return self._compiler


def tokenizer_info(
    tokenizer: Tokenizer, vocab_size: int, stop_token_ids: Iterable[int]
) -> xgrammar.TokenizerInfo:
    """xgrammar's view of `tokenizer` for a model whose logits have `vocab_size` columns.

    The vocabulary goes to xgrammar pre-decoded (VocabType.RAW, no prefix-space handling: see
    vocab.py); special tokens are b"", which xgrammar never allows, and so are the padding ids
    past the tokenizer. The stop tokens are listed: the grammar allows them only where it may end.
    """
    import xgrammar as xgr

    stops = sorted({token for token in stop_token_ids if 0 <= token < vocab_size})
    return xgr.TokenizerInfo(
        grammar_vocab(tokenizer, vocab_size),
        xgr.VocabType.RAW,
        vocab_size=vocab_size,
        stop_token_ids=stops,
        add_prefix_space=False,
    )


@functools.lru_cache(maxsize=_CACHED_SPECS)
def _grammar(kind: str, text: str, any_whitespace: bool, strict: bool) -> xgrammar.Grammar:
    import xgrammar as xgr

    try:
        if kind == "json":
            return xgr.Grammar.from_json_schema(
                text, any_whitespace=any_whitespace, strict_mode=strict
            )
        if kind == "json_object":
            # Any object: additional properties are the point, so never strict.
            return xgr.Grammar.from_json_schema(
                _ANY_OBJECT_SCHEMA, any_whitespace=any_whitespace, strict_mode=False
            )
        if kind == "regex":
            return xgr.Grammar.from_regex(text)
        if kind == "grammar":
            return xgr.Grammar.from_ebnf(text)
        if kind == "choice":
            return xgr.Grammar.from_ebnf(choice_ebnf(json.loads(text)))
        if kind == "structural_tag":
            return xgr.Grammar.from_structural_tag(text)
    except Exception as exc:  # noqa: BLE001 - C++ RuntimeError, pydantic, ...: all user errors
        raise RequestError(
            f"structured_outputs.{kind} cannot be used: {error_detail(exc)}"
        ) from None
    raise RequestError(f"structured_outputs: unknown kind {kind!r}")


def choice_ebnf(choices: list[str]) -> str:
    """A grammar whose root is exactly one of `choices`."""
    return "root ::= " + " | ".join(_literal(choice) for choice in choices)


def _literal(text: str) -> str:
    """`text` as a sequence of EBNF string literals.

    xgrammar reads \\x and \\u escapes greedily (as many hex digits as follow), so a control
    character gets a literal of its own: nothing can follow its escape inside the quotes.
    """
    pieces: list[str] = []
    run: list[str] = []
    for char in text:
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            if run:
                pieces.append('"' + "".join(run) + '"')
                run = []
            pieces.append(f'"\\x{code:02x}"')
        elif char in '"\\':
            run.append("\\" + char)
        else:
            run.append(char)
    if run or not pieces:
        pieces.append('"' + "".join(run) + '"')
    return "(" + " ".join(pieces) + ")"
