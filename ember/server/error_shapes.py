"""Each dialect's error body: a request under /v1/messages gets Anthropic's
{"type": "error", "error": {...}}, one under /api/ Ollama's {"error": "..."}, anything else
OpenAI's (errors.py)."""

from __future__ import annotations

from typing import Any


def dialect_error_body(path: str, status: int, openai_body: dict[str, Any]) -> dict[str, Any]:
    message = str(openai_body.get("error", {}).get("message", "error"))
    if path.startswith("/v1/messages"):
        from ember.server.render.anthropic import error_body

        return error_body(status, message)
    if path.startswith("/api/"):
        return {"error": message}
    return openai_body
