"""Anthropic's Messages API through the official client against a real `ember serve`."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.server.process import ServerProcess
from tests.server.sample_tools import ASK_WEATHER, TIME, WEATHER, anthropic_tool

pytestmark = pytest.mark.server

MODEL = "smol"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0}
"""This SDK has no temperature argument: it goes in as an extra body field."""
SYSTEM = "You are a terse assistant. Answer in one short sentence."
WEATHER_TOOL = anthropic_tool(WEATHER)
TIME_TOOL = anthropic_tool(TIME)
TOOLS: list[Any] = [WEATHER_TOOL, TIME_TOOL]
SCHEMAS = {tool["name"]: tool["input_schema"] for tool in TOOLS}


@pytest.fixture(scope="module")
def claude(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def test_message(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL, max_tokens=16, extra_body=GREEDY, system=SYSTEM, messages=QUESTION
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    [block] = message.content
    assert block.type == "text" and block.text
    assert message.stop_reason in ("end_turn", "max_tokens")
    # Anthropic counts prompt tokens read from the cache apart from input_tokens.
    assert message.usage.cache_read_input_tokens is not None
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens > 10
    assert 1 <= message.usage.output_tokens <= 16


def test_system_blocks_equal_system_string(claude: anthropic.Anthropic) -> None:
    as_string = claude.messages.create(
        model=MODEL, max_tokens=8, extra_body=GREEDY, system=SYSTEM, messages=QUESTION
    )
    as_blocks = claude.messages.create(
        model=MODEL,
        max_tokens=8,
        extra_body=GREEDY,
        system=[{"type": "text", "text": SYSTEM}],
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION[0]["content"]}]}],
    )
    assert as_blocks.content[0].text == as_string.content[0].text  # type: ignore[union-attr]


def test_stop_reasons(claude: anthropic.Anthropic) -> None:
    short = claude.messages.create(model=MODEL, max_tokens=2, extra_body=GREEDY, messages=QUESTION)
    assert short.stop_reason == "max_tokens" and short.stop_sequence is None
    full = claude.messages.create(model=MODEL, max_tokens=64, extra_body=GREEDY, messages=QUESTION)
    text = full.content[0].text  # type: ignore[union-attr]
    word = text.split()[1]
    stopped = claude.messages.create(
        model=MODEL, max_tokens=64, extra_body=GREEDY, messages=QUESTION, stop_sequences=[word]
    )
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == word


def test_stream_equals_message_for_greedy_and_keeps_event_order(
    claude: anthropic.Anthropic,
) -> None:
    # A first request fills the prefix cache, so the two compared below both reuse it and run
    # the same kernels: a cache hit and a miss may part ways at a near-tie of the small model
    # (--deterministic makes them agree; tests/server/test_batching.py).
    for _ in range(2):
        whole = claude.messages.create(
            model=MODEL, max_tokens=24, extra_body=GREEDY, system=SYSTEM, messages=QUESTION
        )
    kinds = []
    with claude.messages.stream(
        model=MODEL, max_tokens=24, extra_body=GREEDY, system=SYSTEM, messages=QUESTION
    ) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    assert final.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    raw = [k for k in kinds if k not in ("text",)]  # the SDK adds a "text" event per delta
    assert raw[:2] == ["message_start", "content_block_start"]
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    middle = raw[2:-3]
    assert "content_block_delta" in middle
    assert set(middle) <= {"ping", "content_block_delta"}


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model=MODEL, system=SYSTEM, messages=QUESTION)
    message = claude.messages.create(
        model=MODEL, max_tokens=1, extra_body=GREEDY, system=SYSTEM, messages=QUESTION
    )
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_unknown_model_is_a_404(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="claude-9", max_tokens=4, messages=QUESTION)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_tools_are_accepted(claude: anthropic.Anthropic) -> None:
    tool = {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    message = claude.messages.create(
        model=MODEL,
        max_tokens=4,
        extra_body=GREEDY,
        tools=[tool],  # type: ignore[list-item]
        messages=[
            *QUESTION,
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "P"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
            },
        ],
    )
    assert message.stop_reason in ("end_turn", "max_tokens")


def _tool_uses(message: Any) -> list[tuple[str, dict[str, Any]]]:
    """The message's tool_use blocks as (name, input), each input checked against its schema."""
    calls = []
    for block in message.content:
        if block.type == "tool_use":
            assert block.id.startswith("toolu_")
            jsonschema.validate(block.input, SCHEMAS[block.name])
            calls.append((block.name, block.input))
    return calls


@pytest.mark.parametrize(
    "tool_choice",
    [{"type": "any"}, {"type": "tool", "name": "get_weather"}],
    ids=["any", "named"],
)
def test_forced_tool_use_streams_the_same(
    claude: anthropic.Anthropic, tool_choice: dict[str, Any]
) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 96,
        "extra_body": GREEDY,
        "tools": TOOLS,
        "tool_choice": tool_choice,
        "messages": ASK_WEATHER,
    }
    message = claude.messages.create(**kwargs)
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    calls = _tool_uses(message)
    assert len(calls) == 1  # one call unless parallel use is asked for
    assert [block.type for block in message.content] == ["tool_use"]  # forced: no text
    if tool_choice["type"] == "tool":
        assert calls[0][0] == "get_weather"
    kinds = []
    with claude.messages.stream(**kwargs) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert _tool_uses(final) == calls
    assert final.usage.output_tokens == message.usage.output_tokens
    assert kinds[0] == "message_start" and kinds[-3:] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert "input_json" in kinds  # the SDK's event for each input_json_delta


def test_tool_result_round_trip_gives_text(claude: anthropic.Anthropic) -> None:
    named = {"type": "tool", "name": "get_weather"}
    first = claude.messages.create(
        model=MODEL,
        max_tokens=96,
        extra_body=GREEDY,
        tools=TOOLS,
        tool_choice=named,  # type: ignore[arg-type]
        messages=ASK_WEATHER,  # type: ignore[arg-type]
    )
    [call] = [block for block in first.content if block.type == "tool_use"]
    history: list[Any] = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": call.id,
                    "content": [{"type": "text", "text": '{"temperature": 21, "sky": "clear"}'}],
                }
            ],
        },
    ]
    answer = claude.messages.create(
        model=MODEL,
        max_tokens=32,
        extra_body=GREEDY,
        tools=TOOLS,
        tool_choice={"type": "none"},
        messages=history,
    )
    assert answer.stop_reason in ("end_turn", "max_tokens")
    [block] = answer.content
    assert block.type == "text" and block.text


def test_tool_choice_none_and_auto_give_text(claude: anthropic.Anthropic) -> None:
    none = claude.messages.create(
        model=MODEL,
        max_tokens=16,
        extra_body=GREEDY,
        tools=TOOLS,
        tool_choice={"type": "none"},
        messages=[{"role": "user", "content": "Say hello."}],
    )
    [block] = none.content
    assert block.type == "text" and block.text
    assert none.stop_reason in ("end_turn", "max_tokens")
    auto = claude.messages.create(
        model=MODEL,
        max_tokens=48,
        extra_body=GREEDY,
        tools=TOOLS,
        tool_choice={"type": "auto"},
        messages=ASK_WEATHER,  # type: ignore[arg-type]
    )
    if any(block.type == "tool_use" for block in auto.content):  # the model chose a call
        assert auto.stop_reason in ("tool_use", "max_tokens")
    else:
        assert auto.content[0].type == "text" and auto.content[0].text
        assert auto.stop_reason in ("end_turn", "max_tokens")


def test_count_tokens_counts_the_tools(claude: anthropic.Anthropic) -> None:
    bare = claude.messages.count_tokens(model=MODEL, messages=ASK_WEATHER)  # type: ignore[arg-type]
    with_tools = claude.messages.count_tokens(
        model=MODEL,
        messages=ASK_WEATHER,  # type: ignore[arg-type]
        tools=TOOLS,
    )
    assert with_tools.input_tokens > bare.input_tokens


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "messages": QUESTION},  # max_tokens is required
        {"model": MODEL, "max_tokens": 4, "messages": []},
        {"model": MODEL, "max_tokens": 4, "messages": [{"role": "robot", "content": "x"}]},
        {"model": MODEL, "max_tokens": 0, "messages": QUESTION},
        {"model": MODEL, "max_tokens": "4", "messages": QUESTION},
        {"model": MODEL, "max_tokens": 4, "temperature": -1, "messages": QUESTION},
        {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [{"x": 1}]}]},
        {
            "model": MODEL,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
        },
        {
            "model": MODEL,
            "max_tokens": 4,
            "messages": QUESTION,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "sometimes"},
        },
        {
            "model": MODEL,
            "max_tokens": 4,
            "messages": QUESTION,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "tool", "name": "nope"},
        },
        {
            "model": MODEL,
            "max_tokens": 4,
            "messages": QUESTION,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
        {"model": MODEL, "max_tokens": 4, "messages": QUESTION, "tool_choice": {"type": "any"}},
        [],
    ],
)
def test_malformed_requests_are_400_in_anthropic_shape(http: httpx.Client, body: object) -> None:
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["message"]


def test_tool_stream_pieces_join_up_to_the_blocks() -> None:
    from ember.server.render.anthropic import _tool_blocks
    from ember.server.tools import ToolCallDelta, ToolStream

    text = (
        ' Let me check. <tool_call>\n{"name": "f", "arguments": {"x": "}"}}\n</tool_call>\n'
        '<tool_call>{"arguments": [], "name": "g"}</tool_call>  done  '
    )
    blocks, whole = _tool_blocks(text)
    assert whole.finish_reason("stop") == "tool_calls"
    assert [b["type"] for b in blocks] == ["text", "tool_use", "tool_use", "text"]
    assert blocks[0]["text"] == "Let me check." and blocks[3]["text"] == "done"
    assert blocks[1]["input"] == {"x": "}"} and blocks[1]["id"].startswith("toolu_")
    assert blocks[2]["input"] == {}  # arguments that are not an object: an empty input
    stream = ToolStream()
    pieces = [p for char in text for p in stream.feed(char)] + stream.feed("", finished=True)
    texts = ["".join(p for p in pieces if isinstance(p, str))]
    arguments = "".join(p.arguments for p in pieces if isinstance(p, ToolCallDelta))
    assert texts == ["Let me check.done"]
    assert arguments == '{"x": "}"}[]'
