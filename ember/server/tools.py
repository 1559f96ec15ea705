"""Tool calling, independent of the API dialect.

A dialect route turns its request into OpenAI-shaped messages, function definitions and a tool
choice, and calls `prepare_tools` (one call does it all); the ToolRequest it gets back holds
- the conversation and `tools` to hand the chat template,
- the grammar constraint for "required" or a named function (checked off the event loop), and
- whether to parse calls out of the output: `parse_tool_calls` for a whole output,
  `ToolCallParser` while streaming (text pieces and ToolCallDeltas, in order).

The call convention is Hermes/Qwen's: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
Templates that know tools (they mention `tools`) get the definitions and the history's
tool_calls as they expect them; templates that ignore tools (SmolLM2's) get a system prompt
that describes the tools and the convention, assistant calls written out in it, and tool
results as user turns wrapped in <tool_response> tags.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ember.sampling_params import StructuredOutputs
from ember.server.errors import bad_request

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

ToolMode = Literal["auto", "required", "named"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """The arguments object as JSON text (OpenAI's function.arguments)."""

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _call_tag(function: Mapping[str, Any]) -> dict[str, Any]:
    """One forced call in the <tool_call>{json}</tool_call> format (what Qwen-style templates and
    the injected tool prompt teach): the name written out, the arguments held to the schema."""
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "tag",
        "begin": f'{CALL_OPEN}\n{{"name": {json.dumps(function["name"])}, "arguments": ',
        "content": {"type": "json_schema", "json_schema": parameters, "style": "json"},
        "end": f"}}\n{CALL_CLOSE}",
    }


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolPlan:
    """Tools a request offers and how the model must use them."""

    functions: list[dict[str, Any]]
    """OpenAI function definitions: {"type": "function", "function": {name, description,
    parameters}}."""
    mode: ToolMode
    name: str | None = None
    """The function a "named" choice forces."""
    parallel: bool = False
    """A "required" output may make more than one call (parallel_tool_calls true); else it
    ends after its first call."""

    def constraint(self) -> StructuredOutputs | None:
        """A structural tag for "required" and named choices (the arguments then always match
        the function's parameters schema); None for "auto". prepare_tools checks it with the
        grammar library (a one-line 400 when a tool's schema cannot be followed)."""
        if self.mode == "auto":
            return None
        if self.mode == "named":
            named = [f for f in self.functions if f["function"]["name"] == self.name]
            call_format: dict[str, Any] = _call_tag(named[0]["function"])
        else:
            # Only calls, one per line: no text before, between or after them (free text
            # around forced calls is where small models ramble).
            call_format = {
                "type": "tags_with_separator",
                "tags": [_call_tag(f["function"]) for f in self.functions],
                "separator": "\n",
                "at_least_one": True,
                "stop_after_first": not self.parallel,
            }
        spec = {"type": "structural_tag", "format": call_format}
        return StructuredOutputs(structural_tag=spec, any_whitespace=False)


@dataclass(frozen=True)
class ToolRequest:
    """What a chat route needs for tools: see `prepare_tools`."""

    messages: list[dict[str, Any]]
    """The conversation to hand the chat template."""
    template_tools: list[dict[str, Any]] | None
    """The template's `tools` variable (None for templates that ignore tools)."""
    constraint: StructuredOutputs | None
    """The forced-call structural tag, already checked ("required" / a named function)."""
    plan: ToolPlan | None
    """None: no tools offered (or tool_choice "none"): do not parse calls."""

    @property
    def parse_calls(self) -> bool:
        return self.plan is not None


async def prepare_tools(
    messages: Sequence[Mapping[str, Any]],
    chat_template: str | None,
    tools: Sequence[Any] | None,
    tool_choice: Any = None,
    *,
    parallel_tool_calls: bool | None = None,
) -> ToolRequest:
    """Everything tool calling needs before a chat request runs, for any dialect.

    `messages` are in OpenAI's template shape (role, content, name; assistant tool_calls as
    [{"id", "type": "function", "function": {"name", "arguments": JSON text or object}}];
    role "tool" with tool_call_id and content); `tools` are OpenAI function definitions;
    `tool_choice` is "auto" / None, "none", "required" or {"type": "function", "function":
    {"name": ...}}. Bad input is a one-line 400 (ApiError). Without tools and without
    tool history this costs nothing. Then: render `messages` with `template_tools`, pass
    `constraint` as SamplingParams.structured_outputs (it excludes any other constraint), and
    when `parse_calls`, split the output with parse_tool_calls / ToolCallParser.
    """
    plan = plan_tools(tools, tool_choice, parallel_tool_calls=parallel_tool_calls)
    constraint = plan.constraint() if plan is not None else None
    if constraint is not None:
        await checked(constraint, "tools")
    rewritten = [dict(m) for m in messages]
    template_tools = None
    if plan is not None or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages):
        functions = plan.functions if plan is not None else None
        rewritten, template_tools = template_messages(messages, chat_template, functions)
    return ToolRequest(rewritten, template_tools, constraint, plan)


async def checked(spec: StructuredOutputs, param: str) -> None:
    """A one-line 400 when the grammar library cannot follow `spec` (checked on a worker
    thread: a large schema takes a while; cached, so the engine's own check is free)."""
    from ember.errors import RequestError
    from ember.structured import check_structured_outputs

    try:
        await asyncio.to_thread(check_structured_outputs, spec)
    except RequestError as exc:
        raise bad_request(str(exc), param) from None


def plan_tools(
    tools: Sequence[Any] | None,
    tool_choice: Any,
    *,
    parallel_tool_calls: bool | None = None,
    param: str = "tools",
) -> ToolPlan | None:
    """The request's tools as a plan, or None when none are offered or tool_choice is "none".

    `tools` are OpenAI's {"type": "function", "function": {"name", "description", "parameters"}};
    `tool_choice` is "auto" (the default), "none", "required" or
    {"type": "function", "function": {"name": ...}}. Anything else is a one-line 400.
    """
    # OpenAI's default is parallel calls, but a small model under "required" repeats calls
    # until max_tokens: one call unless the client asks for more.
    parallel = parallel_tool_calls is True
    if not tools or tool_choice == "none":
        if isinstance(tool_choice, dict) or tool_choice == "required":
            raise bad_request("tool_choice needs tools: the request offers none", "tool_choice")
        return None
    functions = [_function(tool, f"{param}.{i}") for i, tool in enumerate(tools)]
    names = [f["function"]["name"] for f in functions]
    if len(set(names)) != len(names):
        raise bad_request("tools have duplicate function names", param)
    if tool_choice is None or tool_choice == "auto":
        return ToolPlan(functions, "auto", parallel=parallel)
    if tool_choice == "required":
        return ToolPlan(functions, "required", parallel=parallel)
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise bad_request(
                'tool_choice must be "auto", "none", "required" or '
                '{"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
        if name not in names:
            raise bad_request(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
        chosen = [f for f in functions if f["function"]["name"] == name]
        return ToolPlan(chosen, "named", name, parallel=False)
    raise bad_request(
        f'tool_choice must be "auto", "none", "required" or a function, got {tool_choice!r}',
        "tool_choice",
    )


def _function(tool: Any, param: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or not isinstance(function, dict)
    ):
        raise bad_request('each tool must be {"type": "function", "function": {...}}', param)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request("each tool's function needs a name", f"{param}.function.name")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise bad_request("a function's parameters must be a JSON schema object", param)
    described: dict[str, Any] = {"name": name, "parameters": parameters}
    if isinstance(function.get("description"), str):
        described["description"] = function["description"]
    return {"type": "function", "function": described}


# -- the conversation for the chat template ------------------------------------------------------


def template_supports_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in str(chat_template)


def template_messages(
    messages: Sequence[Mapping[str, Any]],
    chat_template: str | None,
    functions: list[dict[str, Any]] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools for the template) of a conversation in OpenAI's template shape (role,
    content, tool_calls, tool_call_id, name), for this template.

    Call it with functions=None when tool_choice is "none" too: a history holding calls and
    results must still render.
    """
    if template_supports_tools(chat_template):
        return [_with_argument_objects(m) for m in messages], functions
    rewritten: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            response = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            previous = rewritten[-1] if rewritten else None
            if previous is not None and previous.get("_tool_results"):
                previous["content"] += "\n" + response
            else:
                rewritten.append({"role": "user", "content": response, "_tool_results": True})
        elif role == "assistant" and message.get("tool_calls"):
            calls = [_written_call(call) for call in message["tool_calls"]]
            text = str(message.get("content") or "")
            content = "\n".join(([text] if text else []) + calls)
            rewritten.append({"role": "assistant", "content": content})
        else:
            rewritten.append(
                {k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id")}
            )
    for message in rewritten:
        message.pop("_tool_results", None)
    if functions:
        # Tools before the caller's system text (Anthropic's cache order: tools, system,
        # messages): an agent's tool list is the same across its conversations while system
        # prompts often differ, so the prefix cache shares the tool block between them.
        prompt = tool_system_prompt(functions)
        if rewritten and rewritten[0].get("role") == "system":
            first = rewritten[0]
            text = str(first.get("content") or "")
            first["content"] = f"{prompt}\n\n{text}" if text else prompt
        else:
            rewritten.insert(0, {"role": "system", "content": prompt})
    return rewritten, None


def tool_system_prompt(functions: list[dict[str, Any]]) -> str:
    described = "\n".join(json.dumps(f["function"], ensure_ascii=False) for f in functions)
    return (
        "You may call functions to help answer. They are listed as JSON inside <tools></tools>:\n"
        f"<tools>\n{described}\n</tools>\n"
        "To call a function, write a JSON object with its name and arguments between "
        "<tool_call></tool_call> tags, like this:\n"
        '<tool_call>\n{"name": "function_name", "arguments": {"argument": "value"}}\n'
        "</tool_call>\n"
        "Function results come back inside <tool_response></tool_response> tags."
    )


def _call_parts(call: Any) -> tuple[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request("an assistant tool_call needs function.name", "messages")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):  # else rendered as the text it is
            arguments = json.loads(arguments) if arguments.strip() else {}
    return function["name"], arguments


def _written_call(call: Any) -> str:
    name, arguments = _call_parts(call)
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def _with_argument_objects(message: Mapping[str, Any]) -> dict[str, Any]:
    """Templates that render tool calls index arguments as a mapping, not JSON text."""
    copied = dict(message)
    if copied.get("tool_calls"):
        calls = []
        for call in copied["tool_calls"]:
            name, arguments = _call_parts(call)
            calls.append(
                {
                    **call,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
        copied["tool_calls"] = calls
    return copied


# -- parsing calls out of the output -----------------------------------------------------------

_CALL_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
"""The start of a call body up to its arguments: {"name": "...", "arguments": """


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed call: the first carries its id and name, the rest carry more of
    the arguments' JSON text (which joins up to the finished call's arguments)."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass
class _OpenCall:
    index: int
    id: str
    name: str
    arguments_start: int
    """Where the arguments begin in the call's body."""
    sent: int = 0
    """How much of the arguments text has been handed out."""


@dataclass
class ToolCallParser:
    """Splits generated text into plain text and tool calls, as it streams.

    feed() returns what is certain so far, in order: text pieces (str) and ToolCallDeltas.
    Text that may be the start of a <tool_call> tag is held back. A call whose body begins
    {"name": ..., "arguments": streams its arguments as they come (holding back what may be
    the body's closing brace); any other body waits for its closing tag and is a call if it
    parses as {"name", "arguments"}, else it stays text. finish() returns the rest: a call the
    model left unclosed keeps the arguments it got. Finished calls collect in `calls`.
    """

    _buffer: str = ""
    _in_call: bool = False
    _open: _OpenCall | None = None
    calls: list[ToolCall] = field(default_factory=list)
    cut_off: bool = False
    """The output ended inside a call (before its closing tag)."""

    def feed(self, text: str) -> list[str | ToolCallDelta]:
        self._buffer += text
        out: list[str | ToolCallDelta] = []
        while True:
            if self._in_call:
                end = self._buffer.find(CALL_CLOSE)
                body = self._buffer if end < 0 else self._buffer[:end]
                self._start_call(body, out)
                if end < 0:
                    if self._open is not None:
                        self._stream_arguments(body, out, final=False)
                    return out
                self._buffer = self._buffer[end + len(CALL_CLOSE) :]
                self._end_call(body, out, closed=True)
            else:
                start = self._buffer.find(CALL_OPEN)
                if start < 0:
                    keep = _partial_length(self._buffer, CALL_OPEN)
                    cut = len(self._buffer) - keep
                    if cut:
                        out.append(self._buffer[:cut])
                    self._buffer = self._buffer[cut:]
                    return out
                if start:
                    out.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(CALL_OPEN) :]
                self._in_call = True

    def finish(self) -> list[str | ToolCallDelta]:
        rest, self._buffer = self._buffer, ""
        out: list[str | ToolCallDelta] = []
        if self._in_call:
            count = len(self.calls)
            self._start_call(rest, out)
            self._end_call(rest, out, closed=False)
            self.cut_off = len(self.calls) > count
        elif rest:
            out.append(rest)
        return out

    def finish_reason(self, reason: str | None) -> str | None:
        """The finish_reason to report: "tool_calls" once calls were made, unless the output
        was cut off inside one (then the engine's reason, "length" say)."""
        if reason is None or not self.calls or (self.cut_off and reason != "stop"):
            return reason
        return "tool_calls"

    def _start_call(self, body: str, out: list[str | ToolCallDelta]) -> None:
        if self._open is not None:
            return
        header = _CALL_HEADER.match(body)
        if header is None or header.end() == len(body):  # more whitespace may follow
            return
        try:
            name = json.loads(f'"{header.group(1)}"')
        except json.JSONDecodeError:
            return
        self._open = _OpenCall(len(self.calls), new_call_id(), name, header.end())
        out.append(ToolCallDelta(self._open.index, self._open.id, name, ""))

    def _stream_arguments(self, body: str, out: list[str | ToolCallDelta], *, final: bool) -> str:
        call = self._open
        assert call is not None
        arguments = body[call.arguments_start :]
        if not final:
            arguments = arguments[: len(arguments) - _partial_length(arguments, CALL_CLOSE)]
        arguments = arguments.rstrip()
        if arguments.endswith("}"):  # the last brace may be the body's own, not the arguments'
            arguments = arguments[:-1].rstrip()
        if len(arguments) > call.sent:
            out.append(ToolCallDelta(call.index, None, None, arguments[call.sent :]))
            call.sent = len(arguments)
        return arguments

    def _end_call(self, body: str, out: list[str | ToolCallDelta], *, closed: bool) -> None:
        self._in_call = False
        if self._open is not None:
            arguments = self._stream_arguments(body, out, final=True)
            call = ToolCall(self._open.id, self._open.name, arguments[: self._open.sent])
            self._open = None
            self.calls.append(call)
            return
        whole = _parse_call(body)
        if whole is None:
            out.append(CALL_OPEN + body + (CALL_CLOSE if closed else ""))
            return
        self.calls.append(whole)
        out.append(ToolCallDelta(len(self.calls) - 1, whole.id, whole.name, whole.arguments))


def _partial_length(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def _parse_call(body: str) -> ToolCall | None:
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(new_call_id(), value["name"], text)


@dataclass(frozen=True)
class ParsedOutput:
    content: str | None
    """The text outside calls, stripped (None if empty)."""
    calls: list[ToolCall]
    finish_reason: str | None


def parse_tool_calls(text: str, finish_reason: str | None = "stop") -> ParsedOutput:
    """A whole output split into text and calls (the same as streaming it through
    ToolCallParser), with the finish_reason to report."""
    parser = ToolCallParser()
    pieces = parser.feed(text) + parser.finish()
    content = "".join(p for p in pieces if isinstance(p, str)).strip()
    return ParsedOutput(content or None, parser.calls, parser.finish_reason(finish_reason))


# -- helpers for dialects that send calls as blocks or objects -----------------------------------


@dataclass
class ToolStream:
    """ToolCallParser for a dialect that keeps text and calls in order (Anthropic's content
    blocks): feed() returns text pieces and ToolCallDeltas, with the whitespace at either end of
    each run of text (before the first call, between calls, at the end) dropped. Feeding a whole
    output at once (finished=True) gives the same pieces joined up, so a response and its
    stream agree."""

    parser: ToolCallParser = field(default_factory=ToolCallParser)
    trim_runs: bool = True
    """False: only the two ends of the whole text are trimmed, so the text pieces join up to
    parse_tool_calls' content (a dialect with one content string, Ollama's)."""
    _pending_space: str = ""
    _run_start: bool = True

    def feed(self, text: str, *, finished: bool = False) -> list[str | ToolCallDelta]:
        pieces = self.parser.feed(text)
        if finished:
            pieces += self.parser.finish()
        out: list[str | ToolCallDelta] = []
        for piece in pieces:
            if isinstance(piece, ToolCallDelta):
                if self.trim_runs:
                    self._pending_space = ""
                    self._run_start = True
                out.append(piece)
                continue
            held = self._pending_space + piece
            if self._run_start:
                held = held.lstrip()
            kept = held.rstrip()
            # Trailing whitespace waits: it is dropped if a call or the end comes next.
            self._pending_space = held[len(kept) :]
            if kept:
                out.append(kept)
                self._run_start = False
        return out

    def finish_reason(self, reason: str | None) -> str | None:
        return self.parser.finish_reason(reason)


def arguments_object(arguments: str) -> dict[str, Any] | None:
    """A call's arguments as an object, for dialects that send objects rather than JSON text;
    None when the text is not a JSON object (a call cut off by max_tokens, say)."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
