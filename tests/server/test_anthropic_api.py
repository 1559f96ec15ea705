"""Anthropic's Messages API through the official client against a real `ember serve`."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.server.process import ServerProcess

pytestmark = pytest.mark.server

MODEL = "smol"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0}
"""This SDK has no temperature argument: it goes in as an extra body field."""
SYSTEM = "You are a terse assistant. Answer in one short sentence."


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
    assert message.usage.input_tokens > 10
    assert 1 <= message.usage.output_tokens <= 16
    assert message.usage.cache_read_input_tokens is not None


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
