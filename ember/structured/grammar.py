"""StructuredOutputs -> an xgrammar Grammar, checked at once and cached.

This step does not depend on the tokenizer, so it is cheap and can run where the request is
accepted: a spec the grammar library rejects becomes a one-line RequestError there. The costly,
vocabulary-dependent compile happens later, on a background thread (compiler.py).
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

from ember.errors import RequestError
from ember.sampling_params import StructuredOutputs

if TYPE_CHECKING:
    import xgrammar

_CACHED_SPECS = 256
_ANY_OBJECT_SCHEMA = '{"type": "object"}'
# xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:123: "
_LOCATION_PREFIX = re.compile(r"^\s*\[[0-9:.]+\]\s+\S+:\d+:\s*")
_MAX_DETAIL = 240


def check_structured_outputs(spec: StructuredOutputs) -> None:
    """Raise a one-line RequestError when the grammar library cannot follow `spec`.

    Thread-safe and cached: a server may call it off its event loop before queueing the
    request, and the engine's own call then costs a dictionary look-up.
    """
    build_grammar(spec)


def build_grammar(spec: StructuredOutputs) -> xgrammar.Grammar:
    """The grammar of `spec` (cached by kind, text and options), or a one-line RequestError."""
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        # An optional extra: on Linux xgrammar pulls in triton (~1 GB) that a CPU never uses.
        raise RequestError(
            "structured outputs need the grammar library: pip install 'ember[structured]'"
        ) from None
    return _grammar(spec.kind, spec.spec, spec.any_whitespace, spec.strict)


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
            import json

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


def error_detail(exc: BaseException) -> str:
    """The first meaningful line of a grammar-library error, without its source location."""
    for line in str(exc).splitlines():
        line = _LOCATION_PREFIX.sub("", line).strip()
        if line:
            return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 3] + "..."
    return type(exc).__name__
