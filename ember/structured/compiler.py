"""Compiling grammars for one model's vocabulary, once each, off the engine's thread.

`StructuredCompiler.compile(spec)` checks the spec at once (the backend's build: cheap,
tokenizer-free, raises a one-line RequestError) and hands the vocabulary-dependent compile - the
grammar library's costly part - to a background thread, returning a PendingGrammar. The engine
calls it from add_request, so the scheduler can already run the request's prefill while its
grammar compiles; the request's first sampling step waits for the compile only if it is still
running then (see masks.py: that wait happens on the mask thread, overlapped with the forward
pass). Unconstrained requests never touch any of this.

Compiled grammars are cached by (kind, spec text, options), so a schema sent with every request
is compiled once. The library's view of the vocabulary is built on first use, also on the
background thread, since listing a 262k vocabulary is not free.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ember.sampling_params import StructuredOutputs
from ember.structured.backend import (
    GrammarBackend,
    GrammarMatcher,
    Vocabulary,
    backend_class,
    check_backend_name,
)
from ember.structured.bitmask import stop_only_row
from ember.structured.matcher import GrammarState
from ember.tokenizer.base import Tokenizer

DEFAULT_CACHE_SIZE = 128
"""Compiled grammars kept (least recently used ones are dropped first)."""


class PendingGrammar:
    """A grammar being compiled (or compiled) for one vocabulary; makes per-sequence states."""

    def __init__(
        self,
        future: Future[Any],
        vocab_size: int,
        stop_row: torch.Tensor,
        new_matcher: Callable[[Any], GrammarMatcher],
    ) -> None:
        self.future = future
        self.vocab_size = vocab_size
        self._stop_row = stop_row
        self._new_matcher = new_matcher

    @property
    def is_ready(self) -> bool:
        return self.future.done()

    def new_state(self) -> GrammarState:
        return GrammarState(self.future, self.vocab_size, self._stop_row, self._new_matcher)


class StructuredCompiler:
    """Grammar compiles for one tokenizer and a model whose logits have `vocab_size` columns.

    Thread-safe. Building it costs nothing: the grammar library is chosen and imported when the
    first constrained request arrives, and the vocabulary listed on the compile thread after.
    `grammar_backend` is "auto" (see backend.py), "llguidance" or "xgrammar".
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        stop_token_ids: Iterable[int],
        cache_size: int = DEFAULT_CACHE_SIZE,
        compile_threads: int = 1,
        grammar_backend: str = "auto",
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted({t for t in stop_token_ids if 0 <= t < vocab_size})
        self.stop_row = stop_only_row(self.stop_token_ids, vocab_size)
        self.grammar_backend = check_backend_name(grammar_backend)
        self._cache_size = cache_size
        self._compile_threads = compile_threads
        # reentrant: a future that is already done runs its callback (which locks) at once
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple[str, str, bool, bool], PendingGrammar] = OrderedDict()
        self._executor: ThreadPoolExecutor | None = None
        self._backend: GrammarBackend | None = None

    @property
    def backend(self) -> GrammarBackend:
        """The grammar library in use (chosen, and its library imported, on first call)."""
        with self._lock:
            if self._backend is None:
                vocab = Vocabulary(self.tokenizer, self.vocab_size, tuple(self.stop_token_ids))
                cls = backend_class(self.grammar_backend)
                self._backend = cls(vocab, self._compile_threads)
            return self._backend

    def warm_up(self) -> Future[Any]:
        """Build the library's view of the vocabulary now, on the background thread, so the
        first constrained request does not pay for it (a server may call this when it loads a
        model)."""
        backend = self.backend
        with self._lock:
            return self._pool().submit(backend.prepare)

    def compile(self, spec: StructuredOutputs) -> PendingGrammar:
        """Start compiling `spec` (or find it compiled); a one-line RequestError for a spec the
        grammar library rejects."""
        key = (spec.kind, spec.spec, spec.any_whitespace, spec.strict)
        with self._lock:
            pending = self._cache.get(key)
            if pending is not None:
                self._cache.move_to_end(key)
                return pending
        backend = self.backend
        grammar = backend.build(spec)  # outside the lock: other threads need not wait on it
        with self._lock:
            pending = self._cache.get(key)
            if pending is None:
                future = self._pool().submit(self._compile, grammar)
                pending = PendingGrammar(
                    future, self.vocab_size, self.stop_row, backend.new_matcher
                )
                self._cache[key] = pending
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
                future.add_done_callback(lambda done: self._forget_failure(key, done))
            return pending

    def _forget_failure(self, key: tuple[str, str, bool, bool], future: Future[Any]) -> None:
        # A failed compile is not kept: the next request with this spec tries again.
        if future.exception() is not None:
            with self._lock:
                pending = self._cache.get(key)
                if pending is not None and pending.future is future:
                    del self._cache[key]

    def _pool(self) -> ThreadPoolExecutor:
        # called with the lock held
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ember-grammar")
        return self._executor

    def _compile(self, grammar: Any) -> Any:
        backend = self.backend
        backend.prepare()
        return backend.compile(grammar)
