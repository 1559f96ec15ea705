"""Hooks for what the engine cannot do yet: constrained output (response_format) and tools.

Every dialect's route calls these with its request's values before anything runs, so the day
the engine learns grammar-constrained decoding (and tool-call parsing) there is one place to
turn an accepted request into engine constraints instead of a 400.
"""

from __future__ import annotations

from typing import Any

from ember.server.errors import bad_request


def structured_output_constraint(response_format: Any) -> None:
    """The engine constraint a response_format asks for.

    Today only {"type": "text"} (no constraint) is accepted; json_object, json_schema, regex,
    grammar and choice get a clear 400. Structured output will return its constraint here.
    """
    kind = getattr(response_format, "type", None) if response_format is not None else None
    if kind in (None, "text"):
        return None
    raise bad_request(
        f"response_format type {kind!r} is not supported yet (only 'text')",
        param="response_format",
    )


def check_tools(tools: list[dict[str, Any]] | None, tool_choice: Any) -> None:
    """Tool calling is not supported yet: a request offering tools gets a 400 (tool_choice
    "none", or an empty list, is the same as no tools)."""
    if not tools or tool_choice == "none":
        return
    raise bad_request("tool calling is not supported yet: send the request without tools", "tools")
