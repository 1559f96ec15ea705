"""Ollama's response bodies: NDJSON stream lines and whole responses for /api/generate and
/api/chat, with the timing fields Ollama's clients read (nanoseconds)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ember.server.encoding import dumps, encode
from ember.server.errors import ApiError
from ember.server.generation import Collected, Generation, failure
from ember.server.sse import EventStreamResponse
from ember.server.tools import ToolCall, ToolStream, arguments_object


class NDJSONResponse(EventStreamResponse):
    """One JSON object per line; closes its source (aborting the engine request) however the
    response ends, like the SSE response it extends."""

    media_type = "application/x-ndjson"


def line(payload: dict[str, Any]) -> bytes:
    return encode(dumps(payload) + "\n")


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def iso(timestamp: float | None) -> str:
    """An RFC 3339 time; None (never) is far in the future, as Ollama reports it."""
    if timestamp is None:
        return "2318-01-01T00:00:00Z"
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def done_reason(finish_reason: str | None) -> str:
    return "length" if finish_reason == "length" else "stop"


@dataclass
class Timing:
    """When the request arrived, its model was ready, its first and last tokens came."""

    started: int = field(default_factory=time.monotonic_ns)
    loaded: int = 0
    first_token: int = 0

    def model_ready(self) -> None:
        self.loaded = time.monotonic_ns()

    def token(self) -> None:
        if not self.first_token:
            self.first_token = time.monotonic_ns()

    def fields(self, prompt_tokens: int, output_tokens: int) -> dict[str, int]:
        end = time.monotonic_ns()
        loaded = self.loaded or self.started
        first = self.first_token or end
        return {
            "total_duration": end - self.started,
            "load_duration": loaded - self.started,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": max(first - loaded, 0),
            "eval_count": output_tokens,
            "eval_duration": max(end - first, 0),
        }


Wrap = Callable[[str], dict[str, Any]]
"""Puts a piece of text where the endpoint wants it (response, or message.content)."""


def generate_piece(text: str) -> dict[str, Any]:
    return {"response": text}


def chat_piece(text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}}


def final_fields(
    model: str, timing: Timing, generation: Generation, finish: str | None
) -> dict[str, Any]:
    usage = generation.usage
    return {
        "model": model,
        "created_at": now_iso(),
        "done": True,
        "done_reason": done_reason(finish),
        **timing.fields(usage.prompt_tokens, usage.completion_tokens),
    }


def tool_call_body(call: ToolCall) -> dict[str, Any]:
    # Ollama's arguments are an object: text that is not one (a call cut off by max_tokens)
    # leaves it empty, and done_reason "length" tells why.
    return {"function": {"name": call.name, "arguments": arguments_object(call.arguments) or {}}}


def chat_tool_piece(text: str, calls: list[ToolCall]) -> dict[str, Any]:
    """/api/chat's message with the calls made (whole: each call once, never partial)."""
    body = chat_piece(text)
    if calls:
        body["message"]["tool_calls"] = [tool_call_body(call) for call in calls]
    return body


def _tool_finish(tools: ToolStream, finish: str | None) -> str | None:
    """Ollama reports a turn that ended in calls as done_reason "stop"."""
    return "stop" if tools.finish_reason(finish) == "tool_calls" else finish


def whole_response(
    model: str,
    timing: Timing,
    generation: Generation,
    collected: Collected,
    wrap: Wrap,
    *,
    parse_tools: bool = False,
) -> dict[str, Any]:
    """The whole response; with `parse_tools` (/api/chat) calls go to message.tool_calls."""
    choice = collected.choices[0]
    if not parse_tools:
        return {
            **wrap(choice.text),
            **final_fields(model, timing, generation, choice.finish_reason),
        }
    tools = ToolStream(trim_runs=False)
    pieces = tools.feed(choice.text, finished=True)
    text = "".join(p for p in pieces if isinstance(p, str))
    finish = _tool_finish(tools, choice.finish_reason)
    return {
        **chat_tool_piece(text, tools.parser.calls),
        **final_fields(model, timing, generation, finish),
    }


async def stream_lines(
    model: str, timing: Timing, generation: Generation, wrap: Wrap, *, parse_tools: bool = False
) -> AsyncIterator[bytes]:
    """NDJSON lines; with `parse_tools` (/api/chat) a line carries each call once it is whole,
    in its message.tool_calls."""
    finish: str | None = None
    tools = ToolStream(trim_runs=False) if parse_tools else None
    sent_calls = 0
    try:
        async for item in generation.events():
            error = failure(item.delta, generation.state)
            if error is not None:
                raise error
            for piece in item.delta.completions:
                if piece.token_ids:
                    timing.token()
                if piece.finish_reason is not None:
                    finish = piece.finish_reason
                if tools is None:
                    if piece.text:
                        body = wrap(piece.text)
                        yield line({"model": model, "created_at": now_iso(), **body, "done": False})
                    continue
                pieces = tools.feed(piece.text, finished=piece.finish_reason is not None)
                text = "".join(p for p in pieces if isinstance(p, str))
                calls = tools.parser.calls[sent_calls:]
                sent_calls += len(calls)
                if text or calls:
                    body = chat_tool_piece(text, calls)
                    yield line({"model": model, "created_at": now_iso(), **body, "done": False})
        if tools is not None:
            finish = _tool_finish(tools, finish)
        yield line({**wrap(""), **final_fields(model, timing, generation, finish)})
    except ApiError as error:
        yield line({"error": error.message})
    finally:
        await generation.close()
