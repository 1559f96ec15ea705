"""Ollama's request bodies (/api/generate, /api/chat, /api/embed, /api/show, /api/pull, ...) and
their conversion to SamplingParams.

Ollama's defaults where a request leaves an option out: temperature 0.8, top_k 40, top_p 0.9
(repeat_penalty is left at 1.0: Ember's penalty covers the whole context, not Ollama's last 64
tokens). num_ctx is accepted but cannot grow the engine's context (it is fixed at start-up);
`template` and `context` are ignored (the model's own chat template is used).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ember.sampling_params import SamplingParams, StructuredOutputs
from ember.server.errors import ApiError, bad_request

KeepAlive = str | int | float | None


class _Body(BaseModel):
    # Lax types: Ollama's clients send numbers as ints or floats interchangeably.
    model_config = ConfigDict(extra="ignore")


class Options(_Body):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    num_predict: int | None = None
    stop: list[str] | str | None = None
    seed: int | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    num_ctx: int | None = None


class _Generating(_Body):
    model: str
    options: Options | None = None
    format: str | dict[str, Any] | None = None
    stream: bool = True
    keep_alive: KeepAlive = None


class GenerateRequest(_Generating):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list[str] | None = None
    context: list[int] | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None


class ChatRequest(_Generating):
    messages: list[ChatMessage] = []
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    """Ember's extension (Ollama has none): OpenAI's "auto", "none", "required" or
    {"type": "function", "function": {"name": ...}}."""

    def template_messages(self) -> list[dict[str, Any]]:
        """The conversation in OpenAI's template shape (what ember/server/tools.py takes)."""
        out = []
        for index, message in enumerate(self.messages):
            if message.images:
                raise bad_request(
                    f"messages.{index}.images: images are not supported (text models only)",
                    f"messages.{index}.images",
                )
            entry: dict[str, Any] = {"role": message.role, "content": message.content or ""}
            if message.tool_calls:
                entry["tool_calls"] = [
                    _openai_call(call, f"{index}_{number}")
                    for number, call in enumerate(message.tool_calls)
                ]
            if message.tool_name is not None:
                entry["name"] = message.tool_name
            out.append(entry)
        return out

    def openai_tools(self) -> list[dict[str, Any]] | None:
        """Ollama's tools are OpenAI's function definitions; a missing type means "function"
        (Ollama's clients always send it, hand-written requests may not)."""
        if not self.tools:
            return None
        return [{"type": "function", **tool} if "type" not in tool else tool for tool in self.tools]


def _openai_call(call: Any, number: str) -> Any:
    """Ollama's {"function": {"name", "arguments": {...}}} with the id and type OpenAI's shape
    has (templates that render calls may print the id). Anything else is passed on for
    tools.py to reject."""
    if not isinstance(call, dict):
        return call
    return {**call, "id": call.get("id") or f"call_{number}", "type": "function"}


class EmbedRequest(_Body):
    model: str
    input: str | list[str] = ""
    truncate: bool = True
    keep_alive: KeepAlive = None


class LegacyEmbeddingsRequest(_Body):
    model: str
    prompt: str = ""
    keep_alive: KeepAlive = None


class ModelRequest(_Body):
    """/api/show and /api/pull: Ollama's clients send `model` (older ones `name`)."""

    model: str | None = None
    name: str | None = None
    stream: bool = True
    insecure: bool = False

    @property
    def model_name(self) -> str:
        name = self.model or self.name
        if not name:
            raise bad_request("model is required", "model")
        return name


def structured_outputs(value: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Ollama's `format`: "json" or a JSON schema."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"json_object": True}
    if isinstance(value, dict):
        return {"json": value}
    raise bad_request(f'format must be "json" or a JSON schema, got {value!r}', "format")


def wanted_max_tokens(options: Options | None) -> int | None:
    """num_predict: -1 (or absent) means "until the context is full" (-2 too)."""
    if options is None or options.num_predict is None or options.num_predict < 0:
        return None
    if options.num_predict == 0:
        raise bad_request("num_predict must be positive (or -1 for no limit)", "num_predict")
    return options.num_predict


def sampling_params(
    body: _Generating,
    max_tokens: int | None,
    *,
    tool_constraint: StructuredOutputs | None = None,
) -> SamplingParams:
    """`tool_constraint` is a forced tool call's constraint, which `format` cannot join."""
    options = body.options or Options()
    constraint: StructuredOutputs | dict[str, Any] | None = structured_outputs(body.format)
    if tool_constraint is not None:
        if constraint is not None:
            raise bad_request(
                'tool_choice "required" or a named function cannot be combined with format',
                "format",
            )
        constraint = tool_constraint

    def given(value: float | int | None, default: float | int) -> Any:
        return default if value is None else value

    try:
        return SamplingParams(
            temperature=given(options.temperature, 0.8),
            top_p=given(options.top_p, 0.9),
            top_k=given(options.top_k, 40),
            min_p=given(options.min_p, 0.0),
            presence_penalty=given(options.presence_penalty, 0.0),
            frequency_penalty=given(options.frequency_penalty, 0.0),
            repetition_penalty=given(options.repeat_penalty, 1.0),
            seed=options.seed,
            stop=options.stop,
            max_tokens=max_tokens,
            structured_outputs=constraint,
        )
    except ValueError as exc:
        field = str(exc).split(" ", 1)[0]
        raise ApiError(400, str(exc), param=field) from None
