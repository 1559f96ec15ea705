"""Anthropic's Messages API request bodies (/v1/messages, /v1/messages/count_tokens) and their
conversion to chat-template messages and SamplingParams.

Tool fields become what ember/server/tools.py takes (OpenAI's shapes): tools become function
definitions, tool_choice OpenAI's choice, tool_use blocks the assistant's tool_calls and
tool_result blocks "tool" messages.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ember.sampling_params import SamplingParams, StructuredOutputs
from ember.server.errors import ApiError, bad_request


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentBlock(_Body):
    model_config = ConfigDict(strict=True, extra="allow")

    type: str
    text: str | None = None
    # tool_use
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    # tool_result
    tool_use_id: str | None = None
    content: str | list[dict[str, Any]] | None = None


class Message(_Body):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(_Body):
    model_config = ConfigDict(strict=True, extra="allow")

    name: str
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=dict)


class CountTokensRequest(_Body):
    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[ContentBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: dict[str, Any] | None = None

    def template_messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        system = _system_text(self.system)
        if system:
            messages.append({"role": "system", "content": system})
        for index, message in enumerate(self.messages):
            messages.extend(_template_messages(message, index))
        return messages

    def template_tools(self) -> list[dict[str, Any]] | None:
        """Tools as OpenAI function definitions (the shape chat templates and tools.py take)."""
        if not self.tools:
            return None
        functions = []
        for index, tool in enumerate(self.tools):
            kind = (tool.model_extra or {}).get("type")
            if kind not in (None, "custom"):
                raise bad_request(
                    f"tools.{index}: tools of type {kind!r} are not supported (custom tools "
                    "with name, description and input_schema only)",
                    f"tools.{index}.type",
                )
            function: dict[str, Any] = {
                "name": tool.name,
                "parameters": tool.input_schema or {"type": "object", "properties": {}},
            }
            if tool.description is not None:
                function["description"] = tool.description
            functions.append({"type": "function", "function": function})
        return functions

    def openai_tool_choice(self) -> str | dict[str, Any] | None:
        """tool_choice in OpenAI's shape: auto -> "auto", any -> "required", tool -> the named
        function, none -> "none"."""
        choice = self.tool_choice
        if choice is None:
            return None
        kind = choice.get("type")
        if kind in _CHOICES:
            return _CHOICES[kind]
        if kind == "tool":
            name = choice.get("name")
            if not isinstance(name, str) or not name:
                raise bad_request('tool_choice of type "tool" needs a name', "tool_choice.name")
            return {"type": "function", "function": {"name": name}}
        raise bad_request(
            f'tool_choice.type must be "auto", "any", "tool" or "none", got {kind!r}',
            "tool_choice.type",
        )

    def parallel_tool_calls(self) -> bool | None:
        """disable_parallel_tool_use turned around; None leaves Ember's default (one call)."""
        disabled = (self.tool_choice or {}).get("disable_parallel_tool_use")
        return None if not isinstance(disabled, bool) else not disabled


_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


class MessagesRequest(CountTokensRequest):
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None


def _system_text(system: str | list[ContentBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    texts = []
    for index, block in enumerate(system):
        if block.type != "text" or block.text is None:
            raise bad_request(f"system.{index}: only text blocks are supported", f"system.{index}")
        texts.append(block.text)
    return "\n".join(texts)


def _tool_result_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


def _template_messages(message: Message, index: int) -> list[dict[str, Any]]:
    """One Anthropic message as chat-template messages: tool_result blocks become "tool"
    messages, tool_use blocks the assistant's tool_calls."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for part_index, block in enumerate(message.content):
        where = f"messages.{index}.content.{part_index}"
        if block.type == "text":
            if block.text is None:
                raise bad_request(f"{where}: a text block needs text", where)
            texts.append(block.text)
        elif block.type == "tool_use":
            if block.name is None:
                raise bad_request(f"{where}: a tool_use block needs a name", where)
            arguments = json.dumps(block.input or {}, ensure_ascii=False)
            tool_calls.append(
                {
                    "id": block.id or "",
                    "type": "function",
                    "function": {"name": block.name, "arguments": arguments},
                }
            )
        elif block.type == "tool_result":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block.tool_use_id or "",
                    "content": _tool_result_text(block.content),
                }
            )
        else:
            raise bad_request(
                f"{where}: content blocks of type {block.type!r} are not supported "
                "(text, tool_use and tool_result only)",
                where,
            )
    out: list[dict[str, Any]] = list(results)
    if texts or tool_calls or not results:
        entry: dict[str, Any] = {"role": message.role, "content": "\n".join(texts)}
        if tool_calls:
            entry["tool_calls"] = tool_calls
        out.append(entry)
    return out


def sampling_params(
    body: MessagesRequest,
    max_tokens: int,
    *,
    structured_outputs: StructuredOutputs | None = None,
) -> SamplingParams:
    """Anthropic's defaults: temperature 1, no top_p/top_k cut. `structured_outputs` is the
    forced tool call's constraint, if any."""
    try:
        return SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=0 if body.top_k is None else body.top_k,
            stop=body.stop_sequences,
            max_tokens=max_tokens,
            structured_outputs=structured_outputs,
        )
    except ValueError as exc:
        field = str(exc).split(" ", 1)[0]
        raise ApiError(400, str(exc), param=field) from None
