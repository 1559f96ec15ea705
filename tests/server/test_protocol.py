"""The server's pure pieces, without a server: request models, their conversion to
SamplingParams, validation messages, chat prompts and settings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from ember.errors import RequestError
from ember.server.errors import ApiError
from ember.server.prompts import render_chat
from ember.server.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    check_limits,
    default_max_tokens,
    sampling_params,
)
from ember.server.routes.common import describe_validation_error
from ember.server.settings import Limits, ServerSettings, is_loopback
from ember.server.structured import check_tools, structured_output_constraint

CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({**CHAT, **fields})


def params(body: Any, **overrides: Any) -> Any:
    options = {"max_tokens": None, "logprobs": None, "prompt_logprobs": None, **overrides}
    return sampling_params(body, **options)


def test_openai_defaults_become_sampling_params() -> None:
    result = params(chat())
    assert (result.temperature, result.top_p, result.top_k, result.min_p) == (1.0, 1.0, 0, 0.0)
    assert result.n == 1 and result.stop == [] and result.logit_bias is None
    tuned = params(
        chat(temperature=0.5, top_k=5, stop="x", logit_bias={"7": -1.5}, seed=3, min_tokens=2),
        max_tokens=9,
    )
    assert tuned.top_k == 5 and tuned.stop == ["x"] and tuned.logit_bias == {7: -1.5}
    assert tuned.seed == 3 and tuned.min_tokens == 2 and tuned.max_tokens == 9


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=5, max_completion_tokens=7).wanted_max_tokens() == 7
    assert chat(max_tokens=5).wanted_max_tokens() == 5
    assert chat().wanted_max_tokens() is None


def test_default_max_tokens_is_the_room_left_under_the_limit() -> None:
    assert default_max_tokens(None, 10, 100, Limits()) is None
    assert default_max_tokens(None, 10, 100, Limits(max_tokens=50)) == 50
    assert default_max_tokens(None, 80, 100, Limits(max_tokens=50)) == 20
    assert default_max_tokens(7, 80, 100, Limits(max_tokens=50)) == 7


def test_chat_logprobs_fields() -> None:
    limits = Limits()
    assert chat().wanted_logprobs(limits) is None
    assert chat(logprobs=True).wanted_logprobs(limits) == 0
    assert chat(logprobs=True, top_logprobs=4).wanted_logprobs(limits) == 4
    with pytest.raises(ApiError, match="needs logprobs"):
        chat(top_logprobs=4).wanted_logprobs(limits)
    with pytest.raises(ApiError, match=r"\[0, 20\]"):
        chat(logprobs=True, top_logprobs=21).wanted_logprobs(limits)


def test_limits_are_checked() -> None:
    limits = Limits(max_n=2, max_stop=1, max_logit_bias=1, max_tokens=10)
    check_limits(chat(n=2, stop="a", logit_bias={"1": 1.0}), limits, 10)
    for body, max_tokens, param in [
        (chat(n=3), None, "n"),
        (chat(stop=["a", "b"]), None, "stop"),
        (chat(stop_token_ids=[1, 2]), None, "stop_token_ids"),
        (chat(logit_bias={"1": 1.0, "2": 1.0}), None, "logit_bias"),
        (chat(), 11, "max_tokens"),
        (chat(prompt_logprobs=21), None, "prompt_logprobs"),
    ]:
        with pytest.raises(ApiError) as caught:
            check_limits(body, limits, max_tokens)
        assert caught.value.status == 400 and caught.value.param == param


def test_invalid_sampling_values_name_their_field() -> None:
    with pytest.raises(ApiError) as caught:
        params(chat(temperature=-1.0))
    assert caught.value.param == "temperature" and "temperature" in caught.value.message


def test_types_are_strict() -> None:
    for bad in ({"n": "2"}, {"n": 2.0}, {"temperature": "1"}, {"stream": 1}, {"stop": 5}):
        with pytest.raises(ValidationError):
            chat(**bad)
    assert chat(temperature=1).temperature == 1.0  # an int is a fine float


def test_content_parts_are_joined_and_non_text_parts_refused() -> None:
    body = chat(
        messages=[
            {
                "role": "developer",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "user", "content": None},
        ]
    )
    assert body.template_messages() == [
        {"role": "system", "content": "a\nb"},
        {"role": "user", "content": ""},
    ]
    image = chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    with pytest.raises(ApiError, match="'image_url' are not supported"):
        image.template_messages()


def test_completion_prompts_of_every_shape() -> None:
    for prompt in ("x", ["x", "y"], [1, 2], [[1], [2, 3]]):
        assert CompletionRequest.model_validate({"prompt": prompt}).prompt == prompt
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"prompt": [1, "x"]})


def test_validation_errors_are_one_line_with_the_field() -> None:
    def describe(body: Any) -> tuple[str, str | None]:
        with pytest.raises(ValidationError) as caught:
            ChatCompletionRequest.model_validate_json(body)
        return describe_validation_error(caught.value)

    message, param = describe('{"messages": [{"role": "wizard"}]}')
    assert param == "messages.0.role" and message.startswith("messages.0.role: ")
    message, param = describe('{"messages": "hi"}')
    assert param == "messages" and "(got 'hi')" in message
    message, param = describe("{oops")
    assert param is None and message.startswith("the request body is not valid JSON")
    message, param = describe("[]")
    assert param is None and "must be a JSON object" in message
    message, _ = describe('{"messages": [], "n": "' + "x" * 500 + '"}')
    assert "\n" not in message and len(message) < 300


class _NoTemplate:
    chat_template = None
    bos_token = eos_token = ""


def test_a_model_without_a_chat_template_cannot_chat() -> None:
    with pytest.raises(RequestError, match="has no chat template.*/v1/completions"):
        render_chat(_NoTemplate(), "base-model", [{"role": "user", "content": "x"}])


def test_template_kwargs_cannot_override_the_renderers_own_names() -> None:
    class Tokenizer(_NoTemplate):
        chat_template = "{{ messages[0]['content'] }}|{{ add_generation_prompt }}|{{ extra }}"

    text = render_chat(
        Tokenizer(),
        "m",
        [{"role": "user", "content": "hi"}],
        template_kwargs={"messages": [], "template": "x", "extra": 5, "add_generation_prompt": 0},
    )
    assert text == "hi|True|5"


def test_malformed_constraints_and_tools_are_400s() -> None:
    structured_output_constraint(None)
    structured_output_constraint(chat(response_format={"type": "text"}).response_format)
    with pytest.raises(ApiError):  # json_schema without its json_schema object
        structured_output_constraint(chat(response_format={"type": "json_schema"}).response_format)
    check_tools(None, None)
    with pytest.raises(ApiError, match="each tool must be"):
        check_tools([{"type": "function"}], "auto")


def test_settings() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert not is_loopback("example.com")
    for bad in ({"port": 70000}, {"api_key": " "}, {"shutdown_timeout": -1}):
        with pytest.raises(ValueError):
            ServerSettings(**bad)
    for bad_limit in ({"max_n": 0}, {"max_logprobs": 21}, {"max_tokens": 0}, {"max_stop": -1}):
        with pytest.raises(ValueError):
            Limits(**bad_limit)
