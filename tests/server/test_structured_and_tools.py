"""Structured output and tool calling through the official openai client against a real
`ember serve` (SmolLM2-135M): every constrained output parses and validates."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import openai
import pytest

from ember.server.errors import ApiError
from ember.server.tools import (
    ToolCallDelta,
    ToolCallParser,
    parse_tool_calls,
    plan_tools,
    template_messages,
)
from tests.server.sample_tools import ASK_WEATHER, TOOLS, WEATHER

pytestmark = pytest.mark.server

MODEL = "smol"

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "age", "address"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    },
    "array": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "enum": ["a", "b", "c"]},
                "minItems": 2,
                "maxItems": 3,
            }
        },
        "required": ["tags"],
        "additionalProperties": False,
    },
}


def _chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    kwargs.setdefault("max_tokens", 96)
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, **kwargs)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_json_object(client: openai.OpenAI) -> None:
    response = _chat(
        client,
        messages=_user("Describe a cat as a JSON object."),
        response_format={"type": "json_object"},
        max_tokens=128,
    )
    [choice] = response.choices
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_strict_validates(client: openai.OpenAI, name: str) -> None:
    schema = SCHEMAS[name]
    response = _chat(
        client,
        messages=_user(f"Give me a {name} as JSON."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        },
        n=2,
        temperature=0.8,
        seed=7,
    )
    for choice in response.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_streamed_json_schema_is_valid(client: openai.OpenAI) -> None:
    schema = SCHEMAS["person"]
    stream = _chat(
        client,
        messages=_user("Invent a person."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    jsonschema.validate(json.loads(text), schema)


def test_regex_and_choice_extras(client: openai.OpenAI) -> None:
    response = _chat(
        client,
        messages=_user("Give a US phone number."),
        extra_body={"guided_regex": r"\(\d{3}\) \d{3}-\d{4}"},
    )
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", response.choices[0].message.content)
    response = _chat(
        client,
        messages=_user("Is the sky blue?"),
        extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}},
    )
    assert response.choices[0].message.content in ("yes", "no", "maybe")
    completion = client.completions.create(
        model=MODEL,
        prompt="The answer is",
        max_tokens=8,
        temperature=0,
        extra_body={"guided_choice": ["left", "right"]},
    )
    assert completion.choices[0].text in ("left", "right")


def test_bad_constraints_are_400s(client: openai.OpenAI) -> None:
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, messages=_user("hi"), response_format=bad_schema)
    assert "\n" not in caught.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        _chat(client, messages=_user("hi"), extra_body={"guided_regex": "(unclosed"})
    with pytest.raises(openai.BadRequestError, match="no field 'foo'"):
        _chat(client, messages=_user("hi"), extra_body={"structured_outputs": {"foo": 1}})
    with pytest.raises(openai.BadRequestError, match="one output constraint"):
        _chat(
            client,
            messages=_user("hi"),
            response_format={"type": "json_object"},
            extra_body={"guided_choice": ["a"]},
        )
    with pytest.raises(openai.BadRequestError, match="cannot be combined"):
        _chat(
            client,
            messages=ASK_WEATHER,
            tools=TOOLS,
            tool_choice="required",
            response_format={"type": "json_object"},
        )
    with pytest.raises(openai.BadRequestError, match="not in tools"):
        _chat(
            client,
            messages=ASK_WEATHER,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )


def _check_calls(message: Any) -> list[tuple[str, dict[str, Any]]]:
    calls = []
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, schemas[call.function.name])
        calls.append((call.function.name, arguments))
    return calls


def _streamed_calls(client: openai.OpenAI, **kwargs: Any) -> tuple[list[Any], str | None]:
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in _chat(client, stream=True, **kwargs):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.id:
                    assert delta.id.startswith("call_") and delta.type == "function"
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    joined = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
    return joined, finish


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["required", "named"],
)
def test_forced_tool_calls(client: openai.OpenAI, tool_choice: Any) -> None:
    kwargs = {"messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": tool_choice}
    response = _chat(client, **kwargs)
    [choice] = response.choices
    assert choice.finish_reason == "tool_calls"
    calls = _check_calls(choice.message)
    assert calls
    assert len(calls) == 1  # without parallel_tool_calls=true: one call, then the end
    assert choice.message.content is None
    if isinstance(tool_choice, dict):
        assert [name for name, _ in calls] == ["get_weather"]
    streamed, finish = _streamed_calls(client, **kwargs)
    assert finish == "tool_calls"
    assert streamed == calls


def test_tool_round_trip(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    first = _chat(client, messages=ASK_WEATHER, tools=TOOLS, tool_choice=named)
    [call] = first.choices[0].message.tool_calls
    messages = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    answer = _chat(client, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=32)
    [choice] = answer.choices
    assert choice.message.tool_calls is None
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_tool_choice_none_and_auto_give_text(client: openai.OpenAI) -> None:
    none = _chat(
        client, messages=_user("Say hello."), tools=TOOLS, tool_choice="none", max_tokens=16
    )
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content
    assert none.choices[0].finish_reason in ("stop", "length")
    auto = _chat(client, messages=ASK_WEATHER, tools=TOOLS, max_tokens=48)
    message = auto.choices[0].message
    if message.tool_calls:  # the model may call a tool on its own: then it parses
        assert auto.choices[0].finish_reason == "tool_calls"
        assert all(json.loads(c.function.arguments) is not None for c in message.tool_calls)
    else:
        assert message.content


# -- the dialect-independent pieces (no server needed) ----------------------------------------


def test_parser_streams_the_same_as_whole_text() -> None:
    text = (
        'Let me check. <tool_call>\n{"name": "f", "arguments": {"x": {"y": "}"}}}\n</tool_call>\n'
        '<tool_call>{"arguments": {}, "name": "g"}</tool_call> a <tool not a tag <tool_call>oops'
    )
    parsed = parse_tool_calls(text)
    content, calls = parsed.content, parsed.calls
    assert parsed.finish_reason == "tool_calls"
    assert content == "Let me check. \n a <tool not a tag <tool_call>oops"
    assert [(c.name, c.arguments) for c in calls] == [("f", '{"x": {"y": "}"}}'), ("g", "{}")]
    parser = ToolCallParser()
    pieces = [p for char in text for p in parser.feed(char)] + parser.finish()
    assert "".join(p for p in pieces if isinstance(p, str)).strip() == content
    streamed: dict[int, list[str]] = {}
    for piece in pieces:
        if isinstance(piece, ToolCallDelta):
            if piece.id is not None:
                streamed[piece.index] = [piece.name or "", ""]
            streamed[piece.index][1] += piece.arguments
    assert [tuple(streamed[i]) for i in sorted(streamed)] == [(c.name, c.arguments) for c in calls]
    assert len([p for p in pieces if isinstance(p, ToolCallDelta)]) > 3  # arguments streamed
    held = ToolCallParser()
    assert held.feed("hi <tool_") == ["hi "]  # may be a tag: held back
    assert held.finish() == ["<tool_"]
    cut = ToolCallParser()  # a call cut off (max_tokens) keeps what it got
    cut.feed('<tool_call>{"name": "f", "arguments": {"x": ')
    cut.finish()
    assert [(c.name, c.arguments) for c in cut.calls] == [("f", '{"x":')]
    assert cut.finish_reason("length") == "length"
    whole = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}</tool_call>', "length")
    assert whole.finish_reason == "tool_calls"


def test_plan_tools_checks_the_request() -> None:
    assert plan_tools(None, None) is None
    assert plan_tools(TOOLS, "none") is None
    plan = plan_tools(TOOLS, {"type": "function", "function": {"name": "get_time"}})
    assert plan is not None and plan.mode == "named" and len(plan.functions) == 1
    for tools, choice in (
        (TOOLS, "sometimes"),
        ([{"type": "function"}], "auto"),
        (None, "required"),
        ([WEATHER, WEATHER], "auto"),
    ):
        with pytest.raises(ApiError):
            plan_tools(tools, choice)


HISTORY = [
    {"role": "system", "content": "Be brief."},
    *ASK_WEATHER,
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
]


def test_templates_without_tools_get_them_described() -> None:
    messages, tools = template_messages(HISTORY, "{{ messages }}", TOOLS)
    assert tools is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    # The tool block first (shared by every conversation with these tools), then the system text.
    assert messages[0]["content"].endswith("\n\nBe brief.")
    assert "get_time" in messages[0]["content"].removesuffix("Be brief.")
    assert messages[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert messages[3]["content"] == "<tool_response>\n21 C\n</tool_response>"


def test_templates_with_tools_get_them_as_they_are() -> None:
    messages, tools = template_messages(HISTORY, "{% for t in tools %}{% endfor %}", TOOLS)
    assert tools == TOOLS
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert messages[3] == HISTORY[3]
