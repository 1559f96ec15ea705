"""One HTTP request's engine work: its prompts (one engine request each) run concurrently and
come back as one ordered-per-prompt stream of events. Streaming and non-streaming responses both
read this stream; `collect` is how a non-streaming response reads it.

    generation = Generation(state, served, inputs)
    await generation.start()        # ApiError here: 400 / 429 / 503, nothing sent yet
    try:
        async for event in generation.events(): ...
    finally:
        await generation.close()    # aborts whatever is still running

start() waits for every prompt's first engine output (or its refusal), so a request the engine
rejects still gets a proper HTTP status before any byte of a stream is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import cast

from ember.core.request import RejectReason, RequestRejected
from ember.engine.generator import StreamDelta
from ember.engine.llm_engine import RequestDelta
from ember.engine.outputs import PositionLogprobDict
from ember.errors import RequestError
from ember.sampling_params import SamplingParams
from ember.server.errors import ApiError, bad_request, queue_full, unavailable
from ember.server.prompts import Prompt
from ember.server.state import ServedModel, ServerState

FAILED_REASONS = ("abort", "error")


@dataclass(frozen=True)
class EngineInput:
    prompt: Prompt
    params: SamplingParams


@dataclass(frozen=True)
class Event:
    prompt_index: int
    delta: RequestDelta


@dataclass
class _End:
    prompt_index: int


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Generation:
    def __init__(self, state: ServerState, served: ServedModel, inputs: list[EngineInput]) -> None:
        self.state = state
        self.served = served
        self.inputs = inputs
        self.request_id = uuid.uuid4().hex
        self._queue: asyncio.Queue[Event | _End | BaseException] = asyncio.Queue()
        self._first: list[asyncio.Future[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._cached = [0] * len(inputs)
        self._completion_tokens = 0

    @property
    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=sum(len(i.prompt.token_ids) for i in self.inputs),
            completion_tokens=self._completion_tokens,
            cached_tokens=sum(self._cached),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._first = [loop.create_future() for _ in self.inputs]
        self._tasks = [
            asyncio.create_task(self._pump(index), name=f"ember-request-{self.request_id}-{index}")
            for index in range(len(self.inputs))
        ]
        await asyncio.wait(self._first, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((f for f in self._first if f.done() and f.exception()), None)
        if failed is not None:
            await self.close()
            error = failed.exception()
            assert error is not None
            raise self._refusal(error)

    async def events(self) -> AsyncIterator[Event]:
        """Every engine output in arrival order, until every prompt has finished."""
        running = len(self.inputs)
        while running:
            item = await self._queue.get()
            if isinstance(item, _End):
                running -= 1
            elif isinstance(item, BaseException):
                raise self._refusal(item)
            else:
                yield item

    async def close(self) -> None:
        """Cancel what still runs; each pump's generator close aborts its engine request."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for future in self._first:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warning
            elif not future.done():
                future.cancel()

    async def _pump(self, index: int) -> None:
        item = self.inputs[index]
        prompt, params = item.prompt, item.params
        recorder = self.state.metrics.recorder(self.served.name)
        first = self._first[index]
        unfinished = set(range(params.n))
        # generate() is an async generator function: closing it aborts the engine request.
        stream = cast(
            AsyncGenerator[RequestDelta, None],
            self.served.engine.generate(
                prompt.token_ids, params, f"{self.request_id}-{index}", prompt=prompt.text
            ),
        )
        try:
            async with contextlib.aclosing(stream):
                async for delta in stream:
                    if not first.done():
                        recorder.admitted(len(prompt.token_ids))
                        first.set_result(None)
                    counts = [len(c.token_ids) for c in delta.completions]
                    total = sum(counts)
                    self._completion_tokens += total
                    recorder.tokens(total, max(counts, default=0))
                    self._cached[index] = max(self._cached[index], delta.num_cached_tokens)
                    for piece in delta.completions:
                        if piece.finish_reason is not None and piece.index in unfinished:
                            unfinished.discard(piece.index)
                            recorder.completion_finished(piece.finish_reason)
                    self._queue.put_nowait(Event(index, delta))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to whoever reads the stream
            if not first.done():
                first.set_exception(exc)
            else:
                self._queue.put_nowait(exc)
        finally:
            if not first.done():  # cancelled before any output, or a stream that ended empty
                first.set_exception(RequestError("the engine ended the request without output"))
            elif first.exception() is None:
                for _ in unfinished:  # the client went away, or the server is closing
                    recorder.completion_finished("abort")
                recorder.ended(len(prompt.token_ids), self._cached[index])
            self._queue.put_nowait(_End(index))

    def _refusal(self, error: BaseException) -> ApiError:
        """The HTTP error for an engine refusal (and a rejection count in the metrics); anything
        that is not a refusal (a bug) is raised again as it is."""
        if isinstance(error, ApiError):
            return error
        state, served = self.state, self.served
        retry = state.settings.retry_after_seconds
        metrics = state.metrics
        if isinstance(error, RequestRejected) and error.reason is RejectReason.QUEUE_FULL:
            metrics.rejected(served.name, "queue_full")
            return queue_full(str(error), retry)  # "server busy: ... retry later"
        if isinstance(error, RequestError):
            if state.draining or not served.engine.healthy:
                metrics.rejected(served.name, "shutting_down")
                return unavailable(f"{served.name} is not available: {error}", retry)
            metrics.rejected(served.name, "invalid")
            return bad_request(str(error))
        raise error


# -- reading the stream into whole completions (non-streaming responses) --------------------


@dataclass
class Choice:
    """One completion, accumulated from its deltas."""

    index: int
    prompt_index: int
    text_parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobDict] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def add(self, piece: StreamDelta) -> None:
        self.text_parts.append(piece.text)
        self.token_ids.extend(piece.token_ids)
        if piece.logprobs is not None:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(piece.logprobs)
        if piece.finish_reason is not None:
            self.finish_reason = piece.finish_reason
            self.stop_reason = piece.stop_reason


@dataclass
class Collected:
    choices: list[Choice]
    prompt_logprobs: list[list[PositionLogprobDict | None] | None]
    usage: Usage


def choice_index(event: Event, piece: StreamDelta, n: int) -> int:
    """Choices are numbered prompt by prompt: prompt i's completions are i*n ... i*n + n-1."""
    return event.prompt_index * n + piece.index


def failure(delta: RequestDelta, state: ServerState) -> ApiError | None:
    """The error a delta reports (an engine failure, or an abort at shutdown), if any."""
    reasons = {c.finish_reason for c in delta.completions}
    if "error" in reasons:
        message = delta.error or "the engine failed while generating"
        return ApiError(500, message, type="server_error", code="engine_error")
    if "abort" in reasons:
        message = delta.error or "the request was aborted"
        return unavailable(message, state.settings.retry_after_seconds)
    return None


async def collect(generation: Generation, n: int) -> Collected:
    """Run the generation to its end (ApiError if it failed on the way)."""
    count = len(generation.inputs)
    choices = [Choice(i, i // n) for i in range(count * n)]
    prompt_logprobs: list[list[PositionLogprobDict | None] | None] = [None] * count
    async for event in generation.events():
        delta = event.delta
        error = failure(delta, generation.state)
        if error is not None:
            raise error
        if delta.prompt_logprobs is not None:
            prompt_logprobs[event.prompt_index] = delta.prompt_logprobs
        for piece in delta.completions:
            choices[choice_index(event, piece, n)].add(piece)
    return Collected(choices, prompt_logprobs, generation.usage)
