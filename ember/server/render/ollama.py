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


def whole_response(
    model: str, timing: Timing, generation: Generation, collected: Collected, wrap: Wrap
) -> dict[str, Any]:
    choice = collected.choices[0]
    # Hook for ember/server/tools.py: /api/chat tool_calls will be parsed out of choice.text.
    return {**wrap(choice.text), **final_fields(model, timing, generation, choice.finish_reason)}


async def stream_lines(
    model: str, timing: Timing, generation: Generation, wrap: Wrap
) -> AsyncIterator[bytes]:
    finish: str | None = None
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
                if piece.text:
                    yield line(
                        {"model": model, "created_at": now_iso(), **wrap(piece.text), "done": False}
                    )
        yield line({**wrap(""), **final_fields(model, timing, generation, finish)})
    except ApiError as error:
        yield line({"error": error.message})
    finally:
        await generation.close()
