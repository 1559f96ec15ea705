"""Anthropic Messages responses and stream events, built from the generation stream.

Stream order (as Anthropic sends it): message_start, content_block_start, ping,
content_block_delta (text_delta) ..., content_block_stop, message_delta (stop_reason, usage),
message_stop. When the request offered tools, blocks open as the output reaches them (after the
ping): text blocks and tool_use blocks, whose input comes as input_json_delta pieces. An error
after the stream began is an `error` event.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ember.server.encoding import dumps, encode
from ember.server.errors import ApiError
from ember.server.generation import Collected, Generation, Usage, failure
from ember.server.tools import ToolCallDelta, ToolStream, arguments_object

# Anthropic's error types by status (what its SDK maps to exception classes).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_reason(finish_reason: str | None, matched: str | int | None) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for an engine finish."""
    if finish_reason == "length":
        return "max_tokens", None
    if isinstance(matched, str):
        return "stop_sequence", matched
    return "end_turn", None


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def tool_use_id(call_id: str) -> str:
    """Anthropic's id for a call: toolu_ and the call's own hex."""
    return "toolu_" + call_id.removeprefix("call_")


def tool_input(arguments: str) -> dict[str, Any]:
    # Arguments that are not a JSON object (a call cut off by max_tokens) leave the input
    # empty: the block must hold an object, and the stop_reason (max_tokens) tells why.
    return arguments_object(arguments) or {}


def _tool_blocks(text: str) -> tuple[list[dict[str, Any]], ToolStream]:
    """The output as text and tool_use blocks, in order (the same split the stream makes)."""
    stream = ToolStream()
    blocks: list[dict[str, Any]] = []
    arguments: dict[int, str] = {}
    for piece in stream.feed(text, finished=True):
        if isinstance(piece, str):
            if blocks and blocks[-1]["type"] == "text":
                blocks[-1]["text"] += piece
            else:
                blocks.append({"type": "text", "text": piece})
            continue
        if piece.id is not None:
            blocks.append(
                {"type": "tool_use", "id": tool_use_id(piece.id), "name": piece.name, "input": {}}
            )
            arguments[len(blocks) - 1] = ""
        arguments[len(blocks) - 1] += piece.arguments
    for position, text_of_arguments in arguments.items():
        blocks[position]["input"] = tool_input(text_of_arguments)
    return blocks, stream


def message_response(
    model: str, collected: Collected, *, parse_tools: bool = False
) -> dict[str, Any]:
    """The whole message; with `parse_tools` calls in the output become tool_use blocks."""
    choice = collected.choices[0]
    reason, sequence = stop_reason(choice.finish_reason, choice.stop_reason)
    content: list[dict[str, Any]] = [{"type": "text", "text": choice.text}]
    if parse_tools:
        blocks, stream = _tool_blocks(choice.text)
        content = blocks or [{"type": "text", "text": ""}]
        if stream.finish_reason(choice.finish_reason) == "tool_calls":
            reason, sequence = "tool_use", None
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_body(collected.usage),
    }


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return encode(f"event: {name}\ndata: {dumps(payload)}\n\n")


@dataclass
class _Blocks:
    """Content block events: each block is started, gets its deltas and is stopped before the
    next one starts; indexes count up from 0."""

    hold_arguments: bool = False
    """Send a tool_use block's input as one delta when the block ends, and only if it is a
    JSON object. Clients parse every partial input as it comes (Anthropic's SDK raises on text
    that cannot begin JSON), so arguments stream piece by piece only when a grammar made
    them JSON (a forced call); a call the model chose freely may hold anything."""
    index: int = -1
    kind: str | None = None
    """The open block's type (None: none is open)."""
    _held: str = ""

    def text(self, text: str) -> list[bytes]:
        events = [] if self.kind == "text" else self._start({"type": "text", "text": ""})
        if text:
            events.append(self._delta({"type": "text_delta", "text": text}))
        return events

    def call(self, piece: ToolCallDelta) -> list[bytes]:
        events = []
        if piece.id is not None:
            block = {"type": "tool_use", "id": tool_use_id(piece.id), "name": piece.name}
            events = self._start({**block, "input": {}})
        if self.hold_arguments:
            self._held += piece.arguments
        elif piece.arguments:
            events.append(self._input_delta(piece.arguments))
        return events

    def stop(self) -> list[bytes]:
        if self.kind is None:
            return []
        events = []
        held, self._held = self._held, ""
        if self.kind == "tool_use" and held.strip() and arguments_object(held) is not None:
            events.append(self._input_delta(held))
        self.kind = None
        payload = {"type": "content_block_stop", "index": self.index}
        events.append(_event("content_block_stop", payload))
        return events

    def _input_delta(self, arguments: str) -> bytes:
        return self._delta({"type": "input_json_delta", "partial_json": arguments})

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        events = self.stop()
        self.index += 1
        self.kind = block["type"]
        payload = {"type": "content_block_start", "index": self.index, "content_block": block}
        events.append(_event("content_block_start", payload))
        return events

    def _delta(self, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return _event("content_block_delta", payload)


async def message_stream(
    model: str,
    generation: Generation,
    *,
    parse_tools: bool = False,
    forced_calls: bool = False,
) -> AsyncIterator[bytes]:
    """The message as events; with `parse_tools` text and tool_use blocks open as the output
    reaches them. A tool_use block's input streams as input_json_delta pieces when
    `forced_calls` (a grammar keeps it JSON), else it comes whole at the block's end."""
    usage = generation.usage
    start: dict[str, Any] = {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage_body(usage), "output_tokens": 0},
    }
    blocks = _Blocks(hold_arguments=not forced_calls)
    tools = ToolStream() if parse_tools else None
    try:
        yield _event("message_start", {"type": "message_start", "message": start})
        if tools is None:  # without tools the one text block opens at once, as Anthropic does
            for raw in blocks.text(""):
                yield raw
        yield _event("ping", {"type": "ping"})
        finish: str | None = None
        matched: str | int | None = None
        async for item in generation.events():
            error = failure(item.delta, generation.state)
            if error is not None:
                raise error
            for piece in item.delta.completions:
                if piece.finish_reason is not None:
                    finish, matched = piece.finish_reason, piece.stop_reason
                if tools is None:
                    pieces: list[str | ToolCallDelta] = [piece.text]
                else:
                    pieces = tools.feed(piece.text, finished=piece.finish_reason is not None)
                for part in pieces:
                    for raw in blocks.text(part) if isinstance(part, str) else blocks.call(part):
                        yield raw
        if blocks.index < 0:  # nothing was said: one empty text block, as the message has
            for raw in blocks.text(""):
                yield raw
        for raw in blocks.stop():
            yield raw
        reason, sequence = stop_reason(finish, matched)
        if tools is not None and tools.finish_reason(finish) == "tool_calls":
            reason, sequence = "tool_use", None
        final = generation.usage
        yield _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": {"output_tokens": final.completion_tokens},
            },
        )
        yield _event("message_stop", {"type": "message_stop"})
    except ApiError as error:
        yield _event("error", error_body(error.status, error.message))
    finally:
        await generation.close()
