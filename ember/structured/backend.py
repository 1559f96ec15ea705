"""The interface a grammar library implements, and the choice of library.

A backend turns a StructuredOutputs into a grammar without the tokenizer (`build`: cheap,
cached, run where the request is accepted), compiles that grammar for one vocabulary (on the
compile thread) and makes one matcher per sequence. Everything else - the compile thread and
cache, the per-sequence state, the masks and their application - is library-free.

Two libraries are supported: xgrammar (backend_xgrammar.py) and llguidance
(backend_llguidance.py). "auto" means the environment's EMBER_GRAMMAR_BACKEND if set, else the
first installed library in AUTO_ORDER.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from ember import envs
from ember.errors import RequestError
from ember.sampling_params import StructuredOutputs
from ember.tokenizer.base import Tokenizer

BACKEND_NAMES = ("llguidance", "xgrammar")
BACKEND_CHOICES = ("auto", *BACKEND_NAMES)
AUTO_ORDER: tuple[str, ...] = ("llguidance", "xgrammar")
"""What "auto" picks: the first of these that is installed."""

_INSTALL_HINT = "pip install llguidance==1.9.1"


class GrammarMatcher(Protocol):
    """Where one sequence stands in a compiled grammar (xgrammar's GrammarMatcher fits as is)."""

    def accept_token(self, token_id: int) -> bool:
        """Advance past `token_id`; False (and no change) when the grammar refuses it."""
        ...

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, index: int) -> object:
        """Write the tokens allowed next into bitmask[index] (see bitmask.py for the layout);
        any return value is ignored."""
        ...

    def is_terminated(self) -> bool:
        """A stop token was accepted: nothing may follow."""
        ...

    def is_completed(self) -> bool:
        """The text so far is a complete match (more may still be allowed)."""
        ...


@dataclass(frozen=True)
class Vocabulary:
    """What a compile needs to know of the model: its tokenizer, the width of its logits and the
    tokens that end generation (allowed only where the grammar may end)."""

    tokenizer: Tokenizer
    vocab_size: int
    stop_token_ids: Sequence[int]


class GrammarBackend(ABC):
    """One grammar library, bound to one vocabulary. Building it costs nothing; `prepare` does
    the vocabulary work, once, on the compile thread."""

    name: ClassVar[str]

    def __init__(self, vocab: Vocabulary, compile_threads: int = 1) -> None:
        self.vocab = vocab
        self.compile_threads = compile_threads

    @staticmethod
    @abstractmethod
    def build(spec: StructuredOutputs) -> Any:
        """The library's grammar for `spec`, or a one-line RequestError. Tokenizer-free, cached
        and thread-safe."""

    @abstractmethod
    def prepare(self) -> None:
        """Set up the library's view of the vocabulary (idempotent; compile thread only)."""

    @abstractmethod
    def compile(self, grammar: Any) -> Any:
        """`grammar` (from build) compiled for this vocabulary (compile thread only)."""

    @abstractmethod
    def new_matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher at the start of `compiled`."""


def backend_class(requested: str = "auto") -> type[GrammarBackend]:
    """The backend for `requested` ("auto" or one of BACKEND_NAMES), with its library imported;
    a one-line RequestError when that library is not installed."""
    name = requested
    if name == "auto":
        name = envs.grammar_backend() or "auto"
        if name not in BACKEND_CHOICES:
            raise RequestError(
                f"EMBER_GRAMMAR_BACKEND must be one of {', '.join(BACKEND_CHOICES)}, got {name!r}"
            )
    check_backend_name(name)
    if name == "auto":
        for candidate in AUTO_ORDER:
            if _importable(candidate):
                return _load(candidate)
        # Both are optional: xgrammar pulls in triton (~1 GB) on Linux that a CPU never uses.
        raise RequestError(
            f"structured outputs need a grammar library (llguidance or xgrammar): {_INSTALL_HINT}"
        )
    if not _importable(name):
        raise RequestError(
            f"structured outputs with the {name} grammar backend need {name}: pip install {name}"
        )
    return _load(name)


def check_backend_name(name: str) -> str:
    """`name` if it names a backend or "auto", else ValueError naming it."""
    if name not in BACKEND_CHOICES:
        raise ValueError(
            f"grammar_backend must be one of {', '.join(BACKEND_CHOICES)}, got {name!r}"
        )
    return name


def _importable(library: str) -> bool:
    try:
        importlib.import_module(library)
    except ImportError:
        return False
    return True


def _load(name: str) -> type[GrammarBackend]:
    if name == "llguidance":
        from ember.structured.backend_llguidance import LLGuidanceBackend

        return LLGuidanceBackend
    from ember.structured.backend_xgrammar import XGrammarBackend

    return XGrammarBackend
