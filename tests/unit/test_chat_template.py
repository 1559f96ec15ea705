"""Chat templates: HF-compatible rendering in a sandbox that fails loudly and stays bounded."""

from __future__ import annotations

import datetime
import enum
from typing import Any

import pytest

from ember.errors import TokenizerError
from ember.tokenizer.chat_template import render_chat_template

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
USER = [{"role": "user", "content": "Hi"}]


def render(template: str, messages: list | None = None, **kwargs: Any) -> str:
    return render_chat_template(template, messages if messages is not None else USER, **kwargs)


def test_renders_chatml_with_and_without_generation_prompt() -> None:
    assert render(CHATML) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render(CHATML, add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"


def test_special_token_and_extra_variables() -> None:
    template = "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}{{ date_string }}"
    assert render(template, bos_token="<s>", eos_token="</s>", date_string="today") == (
        "<s>Hi</s>today"
    )


def test_trim_and_lstrip_blocks_as_hf() -> None:
    template = "A\n  {% if true %}\n  B\n  {% endif %}\nC"
    assert render(template) == "A\n  B\nC"


def test_tojson_follows_hf() -> None:
    assert render("{{ messages[0]|tojson }}", [{"content": "é<&>"}]) == '{"content": "é<&>"}'
    data = {"b": 1, "a": [1]}
    assert render("{{ tools|tojson(indent=2, sort_keys=True) }}", tools=[data]) == (
        '[\n  {\n    "a": [\n      1\n    ],\n    "b": 1\n  }\n]'
    )
    assert render("{{ 'ü'|tojson(ensure_ascii=True) }}") == '"\\u00fc"'


def test_helpers_hf_templates_use() -> None:
    year = str(datetime.datetime.now().year)
    assert render("{{ strftime_now('%Y') }}") in (year, str(int(year) + 1))
    assert render("{% set ns = namespace(n=0) %}{% set ns.n = ns.n + 2 %}{{ ns.n }}") == "2"
    messages = [{"role": "a"}, {"role": "b"}, {"role": "c"}]
    looped = (
        "{% for m in messages %}{% if m.role == 'b' %}{% continue %}{% endif %}"
        "{{ m.role }}{% endfor %}"
    )
    assert render(looped, messages) == "ac"
    assert render("{% generation %}kept{% endgeneration %}") == "kept"
    assert render("{% if tools %}T{% else %}none{% endif %}") == "none"


def test_caller_objects_reach_the_template_as_plain_data() -> None:
    class Role(str, enum.Enum):  # noqa: UP042 (the mixin whose str() is not its value)
        USER = "user"

    rendered = render(
        "{{ messages[0].role }}|{{ messages[0].meta }}", [{"role": Role.USER, "meta": (1, 2)}]
    )
    assert rendered == "user|[1, 2]"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__['os'] }}",
        "{{ lipsum.__globals__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ self.__init__.__globals__ }}",
        "{{ messages[0].items.__self__ }}",
        "{{ messages.append(1) }}",
        "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
        "{{ namespace(_x=1) }}",
    ],
)
def test_sandbox_escapes_are_tokenizer_errors(template: str) -> None:
    with pytest.raises(TokenizerError, match="sandbox forbids") as caught:
        render(template)
    assert "\n" not in str(caught.value)


def test_raise_exception_is_a_tokenizer_error() -> None:
    template = (
        "{% if messages[0].role != 'system' %}"
        "{{ raise_exception('System first!\\nplease') }}{% endif %}"
    )
    with pytest.raises(TokenizerError, match="raised an error: System first! please$"):
        render(template)


def test_unparseable_template_is_a_tokenizer_error() -> None:
    with pytest.raises(TokenizerError, match=r"does not parse \(line 2\)"):
        render("ok\n{% for %}")
    with pytest.raises(TokenizerError, match="does not parse"):
        render("{% if x %}unclosed")


def test_runtime_failure_is_a_tokenizer_error() -> None:
    with pytest.raises(TokenizerError, match="chat template failed: UndefinedError"):
        render("{{ nothing.here }}")


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(10**9) %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 10**9 }}",
        "{{ [1] * 10**9 }}",
        "{{ 10 ** 10000000 }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    ],
)
def test_runaway_templates_hit_a_limit(template: str) -> None:
    with pytest.raises(TokenizerError, match="resource limit"):
        render(template)


def test_limits_leave_ordinary_templates_alone() -> None:
    assert render("{% for i in range(3) %}{{ i }}{% endfor %}{{ '-' * 3 }}{{ 2 ** 10 }}") == (
        "012---1024"
    )
