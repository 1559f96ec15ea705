"""Compiling grammars for one model's vocabulary, once each, off the engine's thread.

`StructuredCompiler.compile(spec)` checks the spec at once (grammar.py: cheap, tokenizer-free,
raises a one-line RequestError) and hands the vocabulary-dependent compile - xgrammar's token
mask pre-computation, the costly part - to a background thread, returning a PendingGrammar.
The engine calls it from add_request, so the scheduler can already run the request's prefill
while its grammar compiles; the request's first sampling step waits for the compile only if it
is still running then (see masks.py: that wait happens on the mask thread, overlapped with the
forward pass). Unconstrained requests never touch any of this.

Compiled grammars are cached by (kind, spec text, options), so a schema sent with every request
is compiled once; xgrammar's own GrammarCompiler (one per tokenizer, built on first use, also on
the background thread since listing a 262k vocabulary is not free) caches too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from ember.sampling_params import StructuredOutputs
from ember.structured.grammar import build_grammar
from ember.structured.matcher import GrammarState
from ember.structured.vocab import tokenizer_info
from ember.tokenizer.base import Tokenizer

if TYPE_CHECKING:
    import xgrammar

DEFAULT_CACHE_SIZE = 128
"""Compiled grammars kept (least recently used ones are dropped first)."""
_XGRAMMAR_CACHE_BYTES = 256 * 1024 * 1024


class PendingGrammar:
    """A grammar being compiled (or compiled) for one vocabulary; makes per-sequence states."""

    def __init__(
        self, future: Future[xgrammar.CompiledGrammar], vocab_size: int, stop_row: torch.Tensor
    ) -> None:
        self.future = future
        self.vocab_size = vocab_size
        self._stop_row = stop_row

    @property
    def is_ready(self) -> bool:
        return self.future.done()

    def new_state(self) -> GrammarState:
        return GrammarState(self.future, self.vocab_size, self._stop_row)


class StructuredCompiler:
    """Grammar compiles for one tokenizer and a model whose logits have `vocab_size` columns.

    Thread-safe. Building it costs nothing: xgrammar is imported and the vocabulary listed only
    when the first constrained request arrives.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        stop_token_ids: Iterable[int],
        cache_size: int = DEFAULT_CACHE_SIZE,
        compile_threads: int = 1,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted({t for t in stop_token_ids if 0 <= t < vocab_size})
        self.stop_row = stop_only_row(self.stop_token_ids, vocab_size)
        self._cache_size = cache_size
        self._compile_threads = compile_threads
        # reentrant: a future that is already done runs its callback (which locks) at once
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple[str, str, bool, bool], PendingGrammar] = OrderedDict()
        self._executor: ThreadPoolExecutor | None = None
        self._compiler: xgrammar.GrammarCompiler | None = None

    def warm_up(self) -> Future[Any]:
        """Build xgrammar's view of the vocabulary now, on the background thread, so the first
        constrained request does not pay for it (a server may call this when it loads a model)."""
        with self._lock:
            return self._pool().submit(self._get_compiler)

    def compile(self, spec: StructuredOutputs) -> PendingGrammar:
        """Start compiling `spec` (or find it compiled); a one-line RequestError for a spec the
        grammar library rejects."""
        key = (spec.kind, spec.spec, spec.any_whitespace, spec.strict)
        with self._lock:
            pending = self._cache.get(key)
            if pending is not None:
                self._cache.move_to_end(key)
                return pending
        grammar = build_grammar(spec)  # outside the lock: other threads need not wait on it
        with self._lock:
            pending = self._cache.get(key)
            if pending is None:
                future = self._pool().submit(self._compile, grammar)
                pending = PendingGrammar(future, self.vocab_size, self.stop_row)
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

    def _compile(self, grammar: xgrammar.Grammar) -> xgrammar.CompiledGrammar:
        return self._get_compiler().compile_grammar(grammar)

    def _get_compiler(self) -> xgrammar.GrammarCompiler:
        # Only the one background thread gets here, so building the compiler needs no lock.
        if self._compiler is None:
            import xgrammar as xgr

            info = tokenizer_info(self.tokenizer, self.vocab_size, self.stop_token_ids)
            self._compiler = xgr.GrammarCompiler(
                info,
                max_threads=self._compile_threads,
                cache_limit_bytes=_XGRAMMAR_CACHE_BYTES,
            )
        return self._compiler


def stop_only_row(stop_token_ids: Iterable[int], vocab_size: int) -> torch.Tensor:
    """The int32 bitmask row (xgrammar's layout: bit i % 32 of word i // 32) allowing exactly
    `stop_token_ids`."""
    words = [0] * ((vocab_size + 31) // 32)
    for token in stop_token_ids:
        words[token // 32] |= 1 << (token % 32)
    # int32 is what xgrammar uses; bit 31 makes the word negative in two's complement
    signed = [word - (1 << 32) if word >= 1 << 31 else word for word in words]
    return torch.tensor(signed, dtype=torch.int32)
