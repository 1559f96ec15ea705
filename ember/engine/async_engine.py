"""The asyncio front end of the serving engine (what the HTTP server talks to).

One background thread owns the LLMEngine: every add, abort and step (all the torch work) happens
there, never on the event loop. The event loop hands it commands through a thread-safe queue; the
thread steps while any request is unfinished and blocks on the queue when there is none. What a
step produced goes back in one ``loop.call_soon_threadsafe`` per step, into one asyncio.Queue per
request.

Ownership, so that nothing needs a lock:
- event loop: ``_streams`` (requests whose generate() is live), ``_accepting``, ``_idle``;
- engine thread: the LLMEngine, ``_live`` (admitted requests and their streams), ``_outbox``;
- shared by plain attribute reads/writes (atomic under the GIL): ``_stats``, ``error``,
  ``_closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from ember.config import EngineConfig
from ember.core import SchedulerStats
from ember.engine.generator import StreamDelta
from ember.engine.llm_engine import LLMEngine, RequestDelta
from ember.errors import RequestError
from ember.models.loader import LoadedModel
from ember.sampling_params import SamplingParams

log = logging.getLogger("ember.engine")

_SHUTTING_DOWN = "the engine is shutting down: not accepting new requests"


@dataclass(eq=False)
class _Stream:
    """The event-loop end of one request."""

    request_id: str
    queue: asyncio.Queue[RequestDelta | BaseException] = field(default_factory=asyncio.Queue)


@dataclass(frozen=True, slots=True)
class _Add:
    stream: _Stream
    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None
    priority: int
    cache_salt: str


@dataclass(frozen=True, slots=True)
class _Abort:
    stream: _Stream
    error: str | None = None
    """Said in the final delta (None for a plain abort: the caller asked for it)."""


class _Stop:
    pass


_Command = _Add | _Abort | _Stop


@dataclass(slots=True)
class _Live:
    stream: _Stream
    n: int


class _EngineBroken(Exception):
    """The engine cannot take another step; the loop thread ends."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class AsyncEngine:
    """Serve many concurrent requests from asyncio code.

    ::

        async with AsyncEngine(loaded, EngineConfig()) as engine:
            async for delta in engine.generate(prompt_ids, SamplingParams(max_tokens=32)):
                ...

    A consumer that stops iterating (or whose task is cancelled) aborts its request; wrap the
    iteration in ``contextlib.aclosing`` to make that happen at once rather than when the
    generator is garbage collected.
    """

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.loaded = loaded
        self.config = config or EngineConfig()
        self.error: str | None = None
        """One-line reason the loop thread died (None while healthy)."""
        self._engine: LLMEngine | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._closed = False
        self._stats = SchedulerStats(
            num_running=0,
            num_waiting=0,
            kv_cache_usage=0.0,
            prefix_cache_hit_rate=0.0,
            num_preemptions=0,
        )
        # event loop side
        self._streams: dict[str, _Stream] = {}
        self._accepting = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._exited = asyncio.Event()
        # engine thread side
        self._live: dict[str, _Live] = {}
        self._outbox: list[tuple[_Stream, RequestDelta | BaseException]] = []

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loop thread; it builds the LLMEngine (and its KV cache) before serving.

        Raises what building the engine raised.
        """
        if self._thread is not None:
            raise RequestError("the engine was already started")
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="ember-engine", daemon=True
        )
        self._thread.start()
        await ready
        self._accepting = True

    async def shutdown(self, timeout: float | None = None) -> bool:
        """Stop the loop thread after its current step; requests still running end with an
        abort delta. True once the thread has ended (False if it was still busy at `timeout`)."""
        self._accepting = False
        thread = self._thread
        if thread is None:
            return True
        if thread.is_alive():
            self._commands.put(_Stop())
            try:
                await asyncio.wait_for(self._exited.wait(), timeout)
            except TimeoutError:
                log.warning("the engine thread did not stop within %s s", timeout)
                return False
        # The thread has signalled its very last action: this join returns at once.
        thread.join()
        return True

    async def __aenter__(self) -> AsyncEngine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def drain(self, timeout: float) -> int:
        """Graceful stop (SIGTERM): refuse new requests, let those in flight finish for up to
        `timeout` seconds, then abort the rest. Returns how many were aborted."""
        self._accepting = False
        if self._streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        left = list(self._streams.values())
        for stream in left:
            self._submit_quietly(_Abort(stream, "the engine shut down before it finished"))
        return len(left)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    @property
    def healthy(self) -> bool:
        """The loop thread is serving; when it died, `error` says why."""
        return self.is_running and self.error is None

    @property
    def engine(self) -> LLMEngine | None:
        """The engine, owned by the loop thread: touch it only while that thread is idle
        (tests) or stopped."""
        return self._engine

    @property
    def num_requests(self) -> int:
        """Requests admitted or waiting for admission that have not ended yet."""
        return len(self._streams)

    def stats(self) -> SchedulerStats:
        """The scheduler's state after the loop thread's latest step or command."""
        return self._stats

    # -- requests --------------------------------------------------------------------------

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str | None = None,
        *,
        prompt: str | None = None,
        priority: int = 0,
        cache_salt: str = "",
    ) -> AsyncIterator[RequestDelta]:
        """Stream a request's deltas, up to the one with finished=True.

        An invalid or refused request raises RequestError (RequestRejected when the scheduler
        refused it, with its reason) from the first ``__anext__``.
        """
        self._check_accepting()
        if request_id is None:
            request_id = uuid.uuid4().hex
        if request_id in self._streams:
            raise RequestError(f"request id {request_id!r} is already in use")
        stream = _Stream(request_id)
        self._streams[request_id] = stream
        self._idle.clear()
        ended = False
        try:
            self._submit(_Add(stream, list(prompt_token_ids), params, prompt, priority, cache_salt))
            while not ended:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                ended = item.finished
                yield item
        finally:
            self._forget(stream)
            if not ended:
                # The consumer is gone (stopped iterating, or its task was cancelled).
                self._submit_quietly(_Abort(stream))

    async def abort(self, request_id: str) -> bool:
        """Abort a request; its stream ends with a finish_reason "abort" delta. False if it is
        not in flight."""
        stream = self._streams.get(request_id)
        if stream is None:
            return False
        self._submit_quietly(_Abort(stream))
        return True

    def _check_accepting(self) -> None:
        if self.error is not None:
            raise RequestError(f"the engine is not running: {self.error}")
        if not self.is_running:
            raise RequestError(
                _SHUTTING_DOWN if self._thread is not None else "the engine is not started"
            )
        if not self._accepting:
            raise RequestError(_SHUTTING_DOWN)

    def _submit(self, command: _Command) -> None:
        self._commands.put(command)
        # The thread sets _closed before its last look at the queue: a command put after that
        # look sees _closed here, so nothing waits forever on a queue nobody reads.
        if self._closed:
            raise RequestError(f"the engine is not running: {self.error or 'it was shut down'}")

    def _submit_quietly(self, command: _Command) -> None:
        if not self._closed:
            self._commands.put(command)

    def _forget(self, stream: _Stream) -> None:
        if self._streams.get(stream.request_id) is stream:
            del self._streams[stream.request_id]
            if not self._streams:
                self._idle.set()

    def _deliver(self, batch: list[tuple[_Stream, RequestDelta | BaseException]]) -> None:
        """On the event loop: route one step's results to their streams."""
        for stream, item in batch:
            if self._streams.get(stream.request_id) is not stream:
                continue  # its consumer has gone
            stream.queue.put_nowait(item)
            if isinstance(item, BaseException) or item.finished:
                self._forget(stream)

    # -- the loop thread -------------------------------------------------------------------

    def _run(self, ready: asyncio.Future[None]) -> None:
        started = False
        try:
            engine = self._engine = LLMEngine(self.loaded, self.config)
            self._stats = engine.stats()
            started = True
            self._post(_resolve, ready, None)
            self._serve(engine)
        except BaseException as exc:  # noqa: BLE001 - whatever ends the thread is reported
            self.error = _one_line(exc)
            if not started:
                self._post(_resolve, ready, exc)
            else:
                log.error("the engine loop stopped: %s", self.error, exc_info=exc)
                self._end_all(None, "error", f"the engine stopped: {self.error}")
        finally:
            self._closed = True
            self._reject_queued()
            self._flush()
            self._post(self._exited.set)

    def _serve(self, engine: LLMEngine) -> None:
        commands = self._commands
        while True:
            if not engine.has_unfinished_requests():
                command = commands.get()  # idle: sleep until a command comes
                if not self._handle(engine, command):
                    return
            while True:
                try:
                    command = commands.get_nowait()
                except queue.Empty:
                    break
                if not self._handle(engine, command):
                    return
            if engine.has_unfinished_requests():
                self._step(engine)
            self._stats = engine.stats()
            self._flush()

    def _handle(self, engine: LLMEngine, command: _Command) -> bool:
        """Apply one command; False to stop the loop."""
        if isinstance(command, _Stop):
            self._end_all(engine, "abort", "the engine shut down before it finished")
            return False
        stream = command.stream
        request_id = stream.request_id
        if isinstance(command, _Abort):
            live = self._live.get(request_id)
            if live is not None and live.stream is stream:
                self._end(engine, request_id, "abort", command.error)
            return True
        try:
            engine.add_request(
                request_id,
                command.prompt_token_ids,
                command.params,
                prompt=command.prompt,
                priority=command.priority,
                cache_salt=command.cache_salt,
            )
        except RequestError as exc:
            self._outbox.append((stream, exc))
        except Exception as exc:  # noqa: BLE001 - a bug must reach the caller, not the loop
            log.exception("adding request %r failed", request_id)
            message = f"request {request_id!r} could not be added: {_one_line(exc)}"
            self._outbox.append((stream, RequestError(message)))
        else:
            self._live[request_id] = _Live(stream, command.params.n)
        return True

    def _step(self, engine: LLMEngine) -> None:
        try:
            deltas = engine.step()
        except Exception as exc:  # noqa: BLE001 - see below
            # The engine ends the batch of a failed model call itself; anything escaping step()
            # leaves the state of every request in doubt, so all of them end with the error.
            reason = f"the engine step failed: {_one_line(exc)}"
            log.error("%s", reason, exc_info=exc)
            self._end_all(engine, "error", reason)
            try:
                engine.step()  # with nothing left, a step must work for the engine to go on
            except Exception as again:
                raise _EngineBroken(f"{reason}; then: {_one_line(again)}") from again
            return
        for delta in deltas:
            live = self._live.get(delta.request_id)
            if live is None:
                continue
            if delta.finished:
                del self._live[delta.request_id]
            self._outbox.append((live.stream, delta))

    def _end(
        self, engine: LLMEngine | None, request_id: str, finish_reason: str, error: str | None
    ) -> None:
        """Take a request out of the engine and close its stream with a final delta."""
        live = self._live.pop(request_id)
        indexes: Sequence[int] = range(live.n)
        if engine is not None:
            output = engine.output(request_id)
            if output is not None:
                indexes = [c.index for c in output.outputs if c.finish_reason is None]
            engine.abort_request(request_id)
        ends = [StreamDelta(i, "", [], None, finish_reason) for i in indexes]
        self._outbox.append((live.stream, RequestDelta(request_id, ends, True, error=error)))

    def _end_all(self, engine: LLMEngine | None, finish_reason: str, error: str) -> None:
        for request_id in list(self._live):
            self._end(engine, request_id, finish_reason, error)

    def _reject_queued(self) -> None:
        """Answer the commands nobody will serve (the thread is ending)."""
        reason = self.error or "it was shut down"
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Add):
                error = RequestError(f"the engine is not running: {reason}")
                self._outbox.append((command.stream, error))

    def _flush(self) -> None:
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self._post(self._deliver, batch)

    def _post(self, callback: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        # RuntimeError: the event loop is closed, nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
