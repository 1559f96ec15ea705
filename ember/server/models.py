"""Several models in one server: loaded on first use by name, unloaded after keep_alive, under
one budget (a count of loaded models and/or bytes: file size plus KV pool).

    state.models = ModelManager(state, engine_config, ...)   # cli_serve.py
    served = await state.model("gemma3-270m")                 # loads it if it is not loaded

Names a request may use: any served name of a loaded model, the served names of the model the
server started with (it reloads after an unload), and any library model that is downloaded
(`ember pull`, or /api/pull). Unknown or not-downloaded names are a 404 in the dialect's shape.

keep_alive (Ollama's semantics): how long a model stays loaded after its last request; 0 unloads
it once idle, a negative value keeps it forever. The model the server started with is kept
forever unless a request says otherwise; models loaded on demand get --keep-alive (default 5m).
A background task unloads expired idle models; loading past the budget first unloads the least
recently used idle models. "Idle": no request in the engine and none handed out in the last
IDLE_GRACE seconds (a request between `state.model()` and the engine is not yet counted there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.errors import EmberError
from ember.server.errors import ApiError, bad_request, not_found

if TYPE_CHECKING:
    from ember.config import EngineConfig
    from ember.server.state import ServedModel, ServerState

log = logging.getLogger("ember.server")

IDLE_GRACE = 0.5
ROOM_WAIT = 30.0
"""How long a load waits for a loaded model to become idle (and unloadable) before a 503."""
REAP_INTERVAL = 1.0
FOREVER: float | None = None

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: str | int | float | None) -> float | None | bool:
    """Seconds to keep a model loaded (None: forever); False when `value` is None (not given).

    Accepts a number of seconds or a Go-style duration ("5m", "1h30m", "-1s"); negative: forever.
    """
    if value is None:
        return False
    if isinstance(value, bool):
        raise bad_request("keep_alive must be a duration or a number of seconds", "keep_alive")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise bad_request(
                    f"keep_alive {value!r} is not a duration (like 5m, 30s, 1h) or seconds",
                    "keep_alive",
                ) from None
            seconds = sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds):
        raise bad_request(f"keep_alive {value!r} is not a finite duration", "keep_alive")
    return FOREVER if seconds < 0 else seconds


@dataclass
class _Slot:
    """Bookkeeping for one loaded model."""

    served: ServedModel
    path: Path
    size: int
    """Estimated bytes: the weights file plus the KV pool."""
    keep_alive: float | None
    last_used: float = field(default_factory=time.monotonic)
    expires_wall: float | None = None


class ModelManager:
    def __init__(
        self,
        state: ServerState,
        engine_config: EngineConfig,
        *,
        startup_paths: dict[ServedModel, Path],
        keep_alive: float | None = 300.0,
        max_loaded_models: int | None = None,
        memory_budget: int | None = None,
    ) -> None:
        self.state = state
        self.engine_config = engine_config
        self.default_keep_alive = keep_alive
        self.max_loaded_models = max_loaded_models
        self.memory_budget = memory_budget
        self._slots: dict[ServedModel, _Slot] = {}
        # Served names of the start-up models: requests for them reload them after an unload.
        self._known: dict[str, tuple[tuple[str, ...], Path]] = {}
        self._loading: dict[Path, asyncio.Future[ServedModel]] = {}
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        for served, path in startup_paths.items():
            for name in served.names:
                self._known[name] = (served.names, path)
            self._slots[served] = _Slot(served, path, self._estimate(served, path), FOREVER)

    # -- lookup and loading ----------------------------------------------------------------

    def slot(self, served: ServedModel) -> _Slot | None:
        return self._slots.get(served)

    def loaded(self) -> list[_Slot]:
        return [s for s in self._slots.values() if s.served in self.state.served]

    async def get(self, name: str) -> ServedModel:
        """The loaded model called `name`, loading it first when it is known but not loaded."""
        names, path = self.locate(name)
        for served in self.state.served:
            if name in served.names or names[0] in served.names:
                return served
        for slot in self.loaded():  # the same file under another name (a path, an alias)
            if slot.path == path:
                return slot.served
        future = self._loading.get(path)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._loading[path] = future
            try:
                served = await self._load(names, path)
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # retrieved: waiters re-raise it themselves
                raise
            else:
                future.set_result(served)
            finally:
                del self._loading[path]
            return served
        return await asyncio.shield(future)

    def locate(self, name: str) -> tuple[tuple[str, ...], Path]:
        """Names and file of a model a request names; 404 when there is none."""
        if name in self._known:
            return self._known[name]
        base = name[: -len(":latest")] if name.endswith(":latest") else name
        if base in self._known:
            return self._known[base]
        from ember.registry.cache import is_complete, read_manifest
        from ember.registry.library import find_entry

        try:
            entry = find_entry(name)
        except EmberError as exc:
            raise not_found(str(exc), code="model_not_found") from None
        if entry is None:
            served = ", ".join(sorted(n for s in self.state.served for n in s.names))
            raise not_found(
                f"the model {name!r} does not exist; loaded: {served}; library models that "
                "are downloaded load on first use",
                code="model_not_found",
            )
        manifest = read_manifest(entry.name)
        if manifest is None or not is_complete(manifest):
            raise not_found(
                f"the model {entry.name!r} is not downloaded; pull it first (/api/pull or "
                f"`ember pull {entry.name}`)",
                code="model_not_found",
            )
        names = tuple(dict.fromkeys((entry.name, name)))
        return names, manifest.path()

    async def _load(self, names: tuple[str, ...], path: Path) -> ServedModel:
        from ember.engine.async_engine import AsyncEngine
        from ember.models.loader import load_model_path
        from ember.server.state import ServedModel

        loop = asyncio.get_running_loop()
        log.info("loading %s from %s", names[0], path)
        try:
            loaded = await loop.run_in_executor(None, load_model_path, path)
        except EmberError as exc:
            raise ApiError(500, f"cannot load {names[0]}: {exc}", type="server_error") from None
        served = ServedModel(names, loaded, AsyncEngine(loaded, self.engine_config))
        size = self._estimate(served, path)
        async with self._lock:
            await self._make_room(size)
            await served.engine.start()
            engine = served.engine.engine
            assert engine is not None
            served.max_model_len = engine.max_model_len
            self._slots[served] = _Slot(served, path, size, self.default_keep_alive)
            self.state.register(served)
        log.info("loaded %s (about %d MiB)", names[0], size >> 20)
        return served

    def _estimate(self, served: ServedModel, path: Path) -> int:
        from ember.engine.llm_engine import KV_DTYPES
        from ember.layers.paged_attention import kv_bytes_per_block, kv_groups

        config = self.engine_config
        model_config = served.loaded.config
        try:
            weights = path.stat().st_size if path.is_file() else 0
        except OSError:
            weights = 0
        groups = kv_groups(model_config)
        block = kv_bytes_per_block(
            model_config, config.block_size, KV_DTYPES[config.kv_cache_dtype], groups
        )
        tokens = config.kv_cache_tokens
        if tokens is None:
            tokens = config.max_num_seqs * min(model_config.context_length, 8192)
        return weights + block * math.ceil(tokens / config.block_size) * len(groups)

    def _idle(self, slot: _Slot, now: float) -> bool:
        return slot.served.engine.num_requests == 0 and now - slot.last_used >= IDLE_GRACE

    async def _make_room(self, size: int) -> None:
        def over(extra: int) -> bool:
            loaded = self.loaded()
            if self.max_loaded_models is not None and len(loaded) + extra > self.max_loaded_models:
                return True
            used = sum(s.size for s in loaded) + size * extra
            return self.memory_budget is not None and used > self.memory_budget

        deadline = time.monotonic() + ROOM_WAIT
        while over(1):
            now = time.monotonic()
            idle = sorted(
                (s for s in self.loaded() if self._idle(s, now)), key=lambda s: s.last_used
            )
            if idle:
                await self._unload(idle[0])
                continue
            if now >= deadline:
                raise ApiError(
                    503,
                    "no room to load another model: every loaded model is busy (see "
                    "--max-loaded-models / --memory-budget)",
                    type="service_unavailable",
                    headers={"Retry-After": str(self.state.settings.retry_after_seconds)},
                )
            await asyncio.sleep(0.1)  # a busy model frees up when its requests end

    # -- use, keep_alive and unloading -------------------------------------------------------

    def touch(self, served: ServedModel, keep_alive: float | None | bool = False) -> None:
        """A request uses `served`; keep_alive (from parse_keep_alive) resets its expiry."""
        slot = self._slots.get(served)
        if slot is None:
            return
        slot.last_used = time.monotonic()
        if keep_alive is not False:
            slot.keep_alive = keep_alive if keep_alive is not True else FOREVER
            if keep_alive == 0:
                self._wake.set()

    def expires_at(self, slot: _Slot) -> float | None:
        """Wall-clock time the model unloads if unused (None: never)."""
        if slot.keep_alive is None:
            return None
        return time.time() + slot.keep_alive - (time.monotonic() - slot.last_used)

    async def unload_now(self, served: ServedModel) -> None:
        slot = self._slots.get(served)
        if slot is not None:
            async with self._lock:
                await self._unload(slot)

    async def _unload(self, slot: _Slot) -> None:
        self._slots.pop(slot.served, None)
        self.state.unregister(slot.served)
        log.info("unloading %s", slot.served.name)
        await slot.served.engine.shutdown(timeout=self.state.settings.shutdown_timeout + 5)

    def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="ember-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None

    async def _reap(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), REAP_INTERVAL)
            self._wake.clear()
            now = time.monotonic()
            for slot in list(self.loaded()):
                if slot.keep_alive is None or self.state.draining or not self._idle(slot, now):
                    continue
                if now - slot.last_used >= slot.keep_alive:
                    async with self._lock:
                        await self._unload(slot)

    def describe(self, slot: _Slot) -> dict[str, Any]:
        return {"name": slot.served.name, "path": str(slot.path), "size": slot.size}
