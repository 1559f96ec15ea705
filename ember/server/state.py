"""ServerState: what every route reaches through `request.app.state.ember`.

It holds the served models (each with its AsyncEngine), the settings, the metrics, two small
thread pools and the shutdown switch. Routes ask it for a model by the name a request gives
(`await state.model(name)`: async so that loading on first use can slot in later).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ember.core import SchedulerStats
from ember.engine.async_engine import AsyncEngine
from ember.models.loader import LoadedModel
from ember.server.errors import not_found, unavailable
from ember.server.metrics import ServerMetrics
from ember.server.settings import ServerSettings

if TYPE_CHECKING:
    from ember.server.models import ModelManager


@dataclass(eq=False)
class ServedModel:
    names: tuple[str, ...]
    """Every name a request may use; the first is the one responses report."""
    loaded: LoadedModel
    engine: AsyncEngine
    created: int = field(default_factory=lambda: int(time.time()))
    max_model_len: int = 0
    """The engine's context limit (set once the engine has started)."""

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.loaded.config.vocab_size


class ServerState:
    def __init__(self, settings: ServerSettings, models: Sequence[ServedModel]) -> None:
        if not models:
            raise ValueError("a server needs at least one model")
        self.settings = settings
        self.served = list(models)
        self._by_name: dict[str, ServedModel] = {}
        for served in self.served:
            for name in served.names:
                if name in self._by_name:
                    raise ValueError(f"two served models are both called {name!r}")
                self._by_name[name] = served
        self.metrics = ServerMetrics(self._engine_stats)
        self.default_name = self.served[0].name
        self.models: ModelManager | None = None
        """Set by `ember serve`: loads models on first use and unloads idle ones (models.py)."""
        self.draining = False
        # Long prompts are tokenized here, off the event loop (see prompts.py).
        self.tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="ember-tokenize")
        # Embeddings run the model outside the engine: one at a time, on their own thread, so
        # they neither block the event loop nor pile up beside the engine thread (see
        # ember/engine/embeddings.py: they use a private KV cache, not the engine's).
        self.embed_pool = ThreadPoolExecutor(1, thread_name_prefix="ember-embed")

    @property
    def default_model(self) -> ServedModel:
        return self.served[0]

    async def model(self, name: str | None) -> ServedModel:
        """The served model a request names (None: the default one); 404 when unknown."""
        if self.models is not None:
            served = self._by_name.get(name or self.default_name)
            if served is None:
                served = await self.models.get(name or self.default_name)
            self.models.touch(served)
            return served
        if name is None:
            return self.default_model
        served = self._by_name.get(name)
        if served is None:
            known = ", ".join(sorted(self._by_name))
            raise not_found(
                f"the model {name!r} does not exist; this server serves: {known}",
                code="model_not_found",
            )
        return served

    def register(self, served: ServedModel) -> None:
        """Serve a model loaded after start-up (models.py)."""
        self.served.append(served)
        for name in served.names:
            self._by_name.setdefault(name, served)

    def unregister(self, served: ServedModel) -> None:
        """Stop routing requests to a model about to be unloaded (models.py)."""
        if served in self.served:
            self.served.remove(served)
        for name in served.names:
            if self._by_name.get(name) is served:
                del self._by_name[name]

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every engine that is not running yet (their KV caches are built here)."""
        for served in self.served:
            if served.engine.is_running:
                continue
            await served.engine.start()
            engine = served.engine.engine
            assert engine is not None
            served.max_model_len = engine.max_model_len
        if self.models is not None:
            self.models.start()

    async def drain(self) -> int:
        """Stop admitting, let in-flight requests finish within the shutdown timeout, abort
        the rest. Returns how many were aborted."""
        self.draining = True
        timeout = self.settings.shutdown_timeout
        aborted = await asyncio.gather(*(s.engine.drain(timeout) for s in self.served))
        return sum(aborted)

    async def stop(self) -> None:
        self.draining = True
        if self.models is not None:
            await self.models.stop()
        for served in list(self.served):
            await served.engine.shutdown(timeout=self.settings.shutdown_timeout + 5)
        self.tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self.embed_pool.shutdown(wait=False, cancel_futures=True)

    # -- health ----------------------------------------------------------------------------

    def health_problem(self) -> str | None:
        if self.draining:
            return "the server is shutting down"
        for served in self.served:
            if not served.engine.healthy:
                return f"{served.name}: {served.engine.error or 'the engine is not running'}"
        return None

    def check_admitting(self, served: ServedModel) -> None:
        """503 when the server is shutting down or this model's engine is not serving."""
        retry = self.settings.retry_after_seconds
        if self.draining:
            self.metrics.rejected(served.name, "shutting_down")
            raise unavailable("the server is shutting down: not accepting new requests", retry)
        if not served.engine.healthy:
            reason = served.engine.error or "the engine is not running"
            raise unavailable(f"{served.name} is not available: {reason}", retry)

    def _engine_stats(self) -> list[tuple[str, SchedulerStats]]:
        return [(s.name, s.engine.stats()) for s in self.served]
