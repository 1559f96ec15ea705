"""OpenAI response bodies and stream chunks, built from the generation stream.

Non-streaming responses are rendered from `generation.collect`; streams turn each engine output
into chunks as it comes. Both read the same events, so greedy output is the same either way.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ember.engine.outputs import PositionLogprobDict, TokenLogprob
from ember.server.errors import ApiError
from ember.server.generation import (
    Choice,
    Collected,
    Event,
    Generation,
    Usage,
    choice_index,
    failure,
)
from ember.server.sse import DONE, event
from ember.server.tools import ToolCallDelta, ToolCallParser, parse_tool_calls


@dataclass(frozen=True)
class RenderContext:
    """What every chunk and response of one request repeats."""

    response_id: str
    model: str
    tokenizer: Any
    n: int
    top_logprobs: int | None
    """Top alternatives per position when logprobs were asked for (None: no logprobs)."""
    include_usage: bool = False
    continuous_usage: bool = False
    show_prompt_logprobs: bool = False
    """The client asked for prompt_logprobs (echo with logprobs scores the prompt too)."""
    created: int = 0
    parse_tools: bool = False
    """The request offered tools: calls in the output become message.tool_calls."""

    @classmethod
    def new(cls, prefix: str, generation: Generation, **fields: Any) -> RenderContext:
        return cls(
            response_id=f"{prefix}-{generation.request_id}",
            model=generation.served.name,
            tokenizer=generation.served.tokenizer,
            created=int(time.time()),
            **fields,
        )


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def error_event(error: ApiError) -> bytes:
    return event(error.body())


LOGPROB_FLOOR = -9999.0
"""-inf (a token that could not be sampled) is not JSON: reported as this, as vLLM does."""


def _finite(logprob: float) -> float:
    return logprob if logprob >= LOGPROB_FLOOR else LOGPROB_FLOOR  # NaN compares False too


def _top(position: PositionLogprobDict, count: int) -> list[tuple[int, TokenLogprob]]:
    ranked = sorted(position.items(), key=lambda item: item[1].rank)
    return [(token, entry) for token, entry in ranked if entry.rank <= count][:count]


def _token_bytes(tokenizer: Any, token: int) -> list[int] | None:
    return list(tokenizer.token_bytes(token)) if tokenizer is not None else None


def _prompt_logprobs_body(
    positions: Sequence[PositionLogprobDict | None] | None,
) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's prompt_logprobs: per prompt token, {token id: {logprob, rank, decoded_token}}."""
    if positions is None:
        return None
    return [
        None
        if position is None
        else {
            str(token): {
                "logprob": _finite(entry.logprob),
                "rank": entry.rank,
                "decoded_token": entry.decoded_token,
            }
            for token, entry in position.items()
        }
        for position in positions
    ]


# -- chat -------------------------------------------------------------------------------------


def chat_logprobs(
    ctx: RenderContext, token_ids: Sequence[int], positions: Sequence[PositionLogprobDict]
) -> dict[str, Any]:
    content = []
    for token, position in zip(token_ids, positions, strict=False):
        chosen = position[token]
        content.append(
            {
                "token": chosen.decoded_token,
                "logprob": _finite(chosen.logprob),
                "bytes": _token_bytes(ctx.tokenizer, token),
                "top_logprobs": [
                    {
                        "token": entry.decoded_token,
                        "logprob": _finite(entry.logprob),
                        "bytes": _token_bytes(ctx.tokenizer, alternative),
                    }
                    for alternative, entry in _top(position, ctx.top_logprobs or 0)
                ],
            }
        )
    return {"content": content, "refusal": None}


def chat_response(ctx: RenderContext, collected: Collected) -> dict[str, Any]:
    choices = []
    for choice in collected.choices:
        logprobs = None
        if ctx.top_logprobs is not None and choice.logprobs is not None:
            logprobs = chat_logprobs(ctx, choice.token_ids, choice.logprobs)
        message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
        finish_reason = choice.finish_reason
        if ctx.parse_tools:
            parsed = parse_tool_calls(choice.text, finish_reason)
            message["content"] = parsed.content
            if parsed.calls:
                message["tool_calls"] = [call.openai() for call in parsed.calls]
            finish_reason = parsed.finish_reason
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
                "stop_reason": choice.stop_reason,
            }
        )
    body = {
        "id": ctx.response_id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": choices,
        "usage": usage_body(collected.usage),
    }
    if ctx.show_prompt_logprobs:
        body["prompt_logprobs"] = _prompt_logprobs_body(collected.prompt_logprobs[0])
    return body


def _stream_chunk(ctx: RenderContext, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    """One SSE chunk of `kind` ("chat.completion.chunk" or "text_completion")."""
    chunk: dict[str, Any] = {
        "id": ctx.response_id,
        "object": kind,
        "created": ctx.created,
        "model": ctx.model,
        "choices": choices,
    }
    if ctx.include_usage:
        chunk["usage"] = None
    return chunk


def _chat_chunk(ctx: RenderContext, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return _stream_chunk(ctx, "chat.completion.chunk", choices)


async def chat_stream(ctx: RenderContext, generation: Generation) -> AsyncIterator[bytes]:
    """SSE chunks: the first of each choice carries the role, the last its finish_reason;
    with include_usage a final chunk with empty choices carries the usage."""
    started: set[int] = set()
    tool_streams: dict[int, _ToolStream] = {}
    try:
        async for item in _checked(generation):
            if isinstance(item, ApiError):
                yield error_event(item)
                break
            for piece in item.delta.completions:
                index = choice_index(item, piece, ctx.n)
                delta: dict[str, Any] = {}
                text = piece.text
                finish_reason = piece.finish_reason
                if ctx.parse_tools:
                    tools = tool_streams.setdefault(index, _ToolStream())
                    text, calls = tools.feed(piece.text, finished=finish_reason is not None)
                    if calls:
                        delta["tool_calls"] = calls
                    finish_reason = tools.parser.finish_reason(finish_reason)
                if index not in started:
                    started.add(index)
                    delta["role"] = "assistant"
                    delta["content"] = text
                elif text:
                    delta["content"] = text
                logprobs = None
                if ctx.top_logprobs is not None and piece.logprobs and piece.token_ids:
                    logprobs = chat_logprobs(ctx, piece.token_ids, piece.logprobs)
                if not delta and logprobs is None and piece.finish_reason is None:
                    continue  # text held back (a possible stop string, a partial character)
                choice = {
                    "index": index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                }
                if piece.finish_reason is not None:
                    choice["stop_reason"] = piece.stop_reason
                chunk = _chat_chunk(ctx, [choice])
                if ctx.continuous_usage:
                    chunk["usage"] = usage_body(generation.usage)
                yield event(chunk)
        else:
            if ctx.include_usage:
                final = _chat_chunk(ctx, [])
                final["usage"] = usage_body(generation.usage)
                yield event(final)
        yield DONE
    finally:
        await generation.close()


@dataclass
class _ToolStream:
    """One choice's text split into content and tool-call deltas as it streams.

    Whitespace before the first call, between calls and at the end is dropped, as the
    non-streamed content is stripped.
    """

    parser: ToolCallParser = field(default_factory=ToolCallParser)
    pending_space: str = ""
    wrote_text: bool = False

    def feed(self, text: str, *, finished: bool) -> tuple[str, list[dict[str, Any]]]:
        pieces = self.parser.feed(text)
        if finished:
            pieces += self.parser.finish()
        content: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in pieces:
            if isinstance(part, ToolCallDelta):
                self.pending_space = ""
                calls.append(_call_delta(part))
                continue
            held = self.pending_space + part
            if not held.strip():
                self.pending_space = held
                continue
            if not self.wrote_text:
                held = held.lstrip()
            stripped = held.rstrip()
            self.pending_space = held[len(stripped) :]
            content.append(stripped)
            self.wrote_text = True
        return "".join(content), calls


def _call_delta(piece: ToolCallDelta) -> dict[str, Any]:
    """OpenAI's shape: the first delta of a call has its id, type and name (arguments ""),
    the rest only more arguments."""
    if piece.id is None:
        return {"index": piece.index, "function": {"arguments": piece.arguments}}
    return {
        "index": piece.index,
        "id": piece.id,
        "type": "function",
        "function": {"name": piece.name, "arguments": piece.arguments},
    }


async def _checked(generation: Generation) -> AsyncIterator[Event | ApiError]:
    """The generation's events, ending with an ApiError instead of raising one (a stream has
    sent its status already: an error can only be an event)."""
    try:
        async for item in generation.events():
            error = failure(item.delta, generation.state)
            if error is not None:
                yield error
                return
            yield item
    except ApiError as error:
        yield error


# -- completions ------------------------------------------------------------------------------


@dataclass
class _Offsets:
    """Where the next token's text starts in a completion choice (legacy logprobs)."""

    next: int = 0


def completion_logprobs(
    ctx: RenderContext,
    token_ids: Sequence[int],
    positions: Sequence[PositionLogprobDict | None],
    offsets: _Offsets,
) -> dict[str, Any]:
    """The legacy shape: parallel lists of tokens, their logprobs, top alternatives and text
    offsets. A position without logprobs (a prompt's first token) has nulls."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    count = ctx.top_logprobs or 0
    for token, position in zip(token_ids, positions, strict=False):
        if position is None or token not in position:
            piece = ctx.tokenizer.decode([token]) if ctx.tokenizer is not None else ""
            tokens.append(piece)
            token_logprobs.append(None)
            tops.append(None)
        else:
            chosen = position[token]
            piece = chosen.decoded_token
            tokens.append(piece)
            token_logprobs.append(_finite(chosen.logprob))
            tops.append(
                {entry.decoded_token: _finite(entry.logprob) for _, entry in _top(position, count)}
            )
        text_offset.append(offsets.next)
        offsets.next += len(piece)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": text_offset,
    }


def _merge_logprobs(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {key: first[key] + second[key] for key in first}


@dataclass(frozen=True)
class Echo:
    """The prompt to repeat before a completion's text (echo=true)."""

    text: str
    token_ids: list[int]


def _echo_part(
    ctx: RenderContext,
    echo: Echo,
    prompt_logprobs: Sequence[PositionLogprobDict | None] | None,
    offsets: _Offsets,
) -> dict[str, Any] | None:
    if ctx.top_logprobs is None:
        offsets.next += len(echo.text)
        return None
    positions = list(prompt_logprobs or [None] * len(echo.token_ids))
    return completion_logprobs(ctx, echo.token_ids, positions, offsets)


def completion_response(
    ctx: RenderContext, collected: Collected, echoes: Sequence[Echo | None]
) -> dict[str, Any]:
    choices = []
    for choice in collected.choices:
        choices.append(_completion_choice(ctx, choice, collected, echoes[choice.prompt_index]))
    return {
        "id": ctx.response_id,
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": choices,
        "usage": usage_body(collected.usage),
    }


def _completion_choice(
    ctx: RenderContext, choice: Choice, collected: Collected, echo: Echo | None
) -> dict[str, Any]:
    offsets = _Offsets()
    prompt_logprobs = collected.prompt_logprobs[choice.prompt_index]
    text = choice.text
    logprobs = None
    echoed = _echo_part(ctx, echo, prompt_logprobs, offsets) if echo is not None else None
    if ctx.top_logprobs is not None:
        logprobs = completion_logprobs(ctx, choice.token_ids, choice.logprobs or [], offsets)
        if echoed is not None:
            logprobs = _merge_logprobs(echoed, logprobs)
    body = {
        "index": choice.index,
        "text": (echo.text if echo is not None else "") + text,
        "logprobs": logprobs,
        "finish_reason": choice.finish_reason,
        "stop_reason": choice.stop_reason,
    }
    if ctx.show_prompt_logprobs:
        body["prompt_logprobs"] = _prompt_logprobs_body(prompt_logprobs)
    return body


def _completion_chunk(ctx: RenderContext, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return _stream_chunk(ctx, "text_completion", choices)


async def completion_stream(
    ctx: RenderContext, generation: Generation, echoes: Sequence[Echo | None]
) -> AsyncIterator[bytes]:
    offsets: dict[int, _Offsets] = {}
    prompt_logprobs: dict[int, list[PositionLogprobDict | None]] = {}
    try:
        async for item in _checked(generation):
            if isinstance(item, ApiError):
                yield error_event(item)
                break
            if item.delta.prompt_logprobs is not None:
                prompt_logprobs[item.prompt_index] = item.delta.prompt_logprobs
            for piece in item.delta.completions:
                index = choice_index(item, piece, ctx.n)
                text = piece.text
                echoed = None
                if index not in offsets:
                    offsets[index] = _Offsets()
                    echo = echoes[item.prompt_index]
                    if echo is not None:
                        plp = prompt_logprobs.get(item.prompt_index)
                        echoed = _echo_part(ctx, echo, plp, offsets[index])
                        text = echo.text + text
                logprobs = None
                if ctx.top_logprobs is not None:
                    logprobs = completion_logprobs(
                        ctx, piece.token_ids, piece.logprobs or [], offsets[index]
                    )
                    if echoed is not None:
                        logprobs = _merge_logprobs(echoed, logprobs)
                news = text or (logprobs is not None and piece.token_ids)
                if not news and piece.finish_reason is None:
                    continue  # text held back (a possible stop string, a partial character)
                choice = {
                    "index": index,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": piece.finish_reason,
                }
                if piece.finish_reason is not None:
                    choice["stop_reason"] = piece.stop_reason
                chunk = _completion_chunk(ctx, [choice])
                if ctx.continuous_usage:
                    chunk["usage"] = usage_body(generation.usage)
                yield event(chunk)
        else:
            if ctx.include_usage:
                final = _completion_chunk(ctx, [])
                final["usage"] = usage_body(generation.usage)
                yield event(final)
        yield DONE
    finally:
        await generation.close()
