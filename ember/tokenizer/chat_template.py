"""Render Hugging Face style chat templates (Jinja) safely.

Templates come with model files, so they are untrusted code. They run in Jinja's immutable
sandbox with the helpers HF templates expect (raise_exception, strftime_now, an HF-style
tojson filter, namespace, loop controls, a no-op {% generation %} block), trim_blocks and
lstrip_blocks as HF sets them. On top of the sandbox:
- reaching for an unsafe attribute (``''.__class__``) is an error instead of an empty string;
- data handed to the template is rebuilt from plain JSON types, so no caller object with
  dangerous methods gets in;
- runaway templates hit limits (range items per render, sizes of `*`/`**` results, output
  length) instead of hanging or exhausting memory.
Every failure is a TokenizerError with a one-line message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ember.errors import TokenizerError

MAX_RANGE_ITEMS_PER_RENDER = 1_000_000
MAX_REPEAT_SIZE = 10_000_000  # items or characters produced by one `*`
MAX_POWER_BITS = 100_000
MAX_RENDERED_CHARS = 64 * 1024 * 1024

_range_budget: ContextVar[list[int]] = ContextVar("chat_template_range_budget")


class _TemplateRaised(Exception):
    """raise_exception() was called by the template."""


class _LimitExceeded(Exception):
    pass


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # HF's filter: no HTML escaping (unlike Jinja's), and exposes json.dumps' options.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _bounded_range(*args: int) -> range:
    items = range(*args)
    budget = _range_budget.get(None)
    if budget is not None:
        budget[0] -= len(items)
        if budget[0] < 0:
            raise _LimitExceeded(
                f"more than {MAX_RANGE_ITEMS_PER_RENDER} range() items in one rendering"
            )
    return items


class _Namespace(jinja2.utils.Namespace):
    """namespace() that refuses underscore names, which could shadow its internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (Jinja's signature trick)
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


class _GenerationBlock(jinja2.ext.Extension):
    """Accepts HF's {% generation %}...{% endgeneration %} and renders the body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


class _StrictSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**"])

    def unsafe_undefined(self, obj: Any, attribute: Any) -> Any:
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed"
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(count, int)
                    and len(seq) * count > MAX_REPEAT_SIZE
                ):
                    raise _LimitExceeded(f"a `*` result larger than {MAX_REPEAT_SIZE}")
            return left * right
        if operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and max(abs(left).bit_length(), 1) * right > MAX_POWER_BITS
            ):
                raise _LimitExceeded("a `**` result too large")
            return left**right
        return super().call_binop(context, operator, left, right)


def _make_environment() -> _StrictSandbox:
    env = _StrictSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationBlock],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    env.globals["range"] = _bounded_range
    return env


_ENVIRONMENT = _make_environment()


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    return _ENVIRONMENT.from_string(template)


def _plain(value: Any) -> Any:
    """`value` rebuilt from JSON types only; anything else becomes its string form."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    # Subclasses of the scalar types (enums, numpy scalars...) carry methods: keep the value.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[Any] | None = None,
    **extra: Any,
) -> str:
    """The prompt text `template` renders for `messages` (raises TokenizerError on failure)."""
    try:
        compiled = _compile(template)
    except jinja2.TemplateSyntaxError as exc:
        raise TokenizerError(
            f"chat template does not parse (line {exc.lineno}): {_one_line(exc.message or '')}"
        ) from None
    except Exception as exc:
        raise TokenizerError(f"chat template cannot be compiled: {_one_line(str(exc))}") from None

    context = {
        **_plain(extra),
        "messages": _plain(messages),
        "add_generation_prompt": bool(add_generation_prompt),
        "bos_token": str(bos_token),
        "eos_token": str(eos_token),
        "tools": _plain(tools),
    }
    token = _range_budget.set([MAX_RANGE_ITEMS_PER_RENDER])
    try:
        parts: list[str] = []
        size = 0
        for chunk in compiled.generate(**context):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise _LimitExceeded(f"output longer than {MAX_RENDERED_CHARS} characters")
            parts.append(chunk)
        return "".join(parts)
    except _TemplateRaised as exc:
        raise TokenizerError(f"chat template raised an error: {_one_line(str(exc))}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TokenizerError(
            f"chat template tried something the sandbox forbids: {_one_line(str(exc))}"
        ) from None
    except (_LimitExceeded, OverflowError, MemoryError, RecursionError) as exc:
        reason = _one_line(str(exc)) or type(exc).__name__
        raise TokenizerError(f"chat template exceeded a resource limit: {reason}") from None
    except Exception as exc:
        raise TokenizerError(
            f"chat template failed: {type(exc).__name__}: {_one_line(str(exc))}"
        ) from None
    finally:
        _range_budget.reset(token)


def render_for_tokenizer(
    tokenizer: Any,
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: list[Any] | None = None,
    **extra: Any,
) -> str:
    """render_chat_template with the tokenizer's own BOS / EOS texts."""
    return render_chat_template(
        template,
        [dict(m) for m in messages],
        add_generation_prompt=add_generation_prompt,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
        tools=tools,
        **extra,
    )
