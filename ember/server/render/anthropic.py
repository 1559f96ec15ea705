"""Anthropic Messages responses and stream events, built from the generation stream.

Stream order (as Anthropic sends it): message_start, content_block_start, ping,
content_block_delta (text_delta) ..., content_block_stop, message_delta (stop_reason, usage),
message_stop. An error after the stream began is an `error` event.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from ember.server.encoding import dumps, encode
from ember.server.errors import ApiError
from ember.server.generation import Collected, Generation, Usage, failure

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


def message_response(model: str, collected: Collected) -> dict[str, Any]:
    choice = collected.choices[0]
    reason, sequence = stop_reason(choice.finish_reason, choice.stop_reason)
    # Hook for ember/server/tools.py: tool_use blocks will be parsed out of choice.text here.
    content = [{"type": "text", "text": choice.text}]
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


async def message_stream(model: str, generation: Generation) -> AsyncIterator[bytes]:
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
    try:
        yield _event("message_start", {"type": "message_start", "message": start})
        block = {"type": "text", "text": ""}
        yield _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        yield _event("ping", {"type": "ping"})
        finish: str | None = None
        matched: str | int | None = None
        async for item in generation.events():
            error = failure(item.delta, generation.state)
            if error is not None:
                raise error
            for piece in item.delta.completions:
                if piece.text:
                    delta = {"type": "text_delta", "text": piece.text}
                    yield _event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0, "delta": delta},
                    )
                if piece.finish_reason is not None:
                    finish, matched = piece.finish_reason, piece.stop_reason
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        reason, sequence = stop_reason(finish, matched)
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
