"""StructuredOutputs -> the grammar library's grammar, checked at once and cached.

This step does not depend on the tokenizer, so it is cheap and can run where the request is
accepted: a spec the grammar library rejects becomes a one-line RequestError there. The costly,
vocabulary-dependent compile happens later, on a background thread (compiler.py). Which library
does the work is the backend's business (backend.py); both cache their grammars per spec.
"""

from __future__ import annotations

import re
from typing import Any

from ember.sampling_params import StructuredOutputs

# xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:123: "
_LOCATION_PREFIX = re.compile(r"^\s*\[[0-9:.]+\]\s+\S+:\d+:\s*")
_MAX_DETAIL = 240


def check_structured_outputs(spec: StructuredOutputs, grammar_backend: str = "auto") -> None:
    """Raise a one-line RequestError when the grammar library cannot follow `spec`.

    Thread-safe and cached: a server may call it off its event loop before queueing the
    request, and the engine's own call (with the same backend) then costs a dictionary look-up.
    """
    build_grammar(spec, grammar_backend)


def build_grammar(spec: StructuredOutputs, grammar_backend: str = "auto") -> Any:
    """The grammar of `spec` in the chosen backend's library, or a one-line RequestError (also
    when no grammar library is installed)."""
    from ember.structured.backend import backend_class

    return backend_class(grammar_backend).build(spec)


def error_detail(exc: BaseException | str) -> str:
    """The first meaningful line of a grammar-library error, without its source location."""
    for line in str(exc).splitlines():
        line = _LOCATION_PREFIX.sub("", line).strip()
        if line:
            return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 3] + "..."
    return type(exc).__name__ if isinstance(exc, BaseException) else "unknown error"
