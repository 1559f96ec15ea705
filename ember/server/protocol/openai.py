"""OpenAI's request bodies (chat completions, completions, embeddings) and vLLM's extensions,
as strict pydantic models, plus their conversion to SamplingParams.

Types are strict (a string is not a number, 1.5 is not an int); unknown fields are ignored, as
vLLM does, because clients send many OpenAI options that do not change generation (`user`,
`store`, `metadata`, ...). Extensions over OpenAI (from vLLM): top_k, min_p,
repetition_penalty, min_tokens, ignore_eos, stop_token_ids, prompt_logprobs,
include_stop_str_in_output, skip_special_tokens, chat_template_kwargs, and the constrained-output
fields guided_json / guided_regex / guided_grammar / guided_choice / structured_outputs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ember.sampling_params import SamplingParams, StructuredOutputs
from ember.server.errors import ApiError, bad_request
from ember.server.settings import Limits


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False
    """vLLM's extension: usage on every chunk."""


class ResponseFormat(_Body):
    model_config = ConfigDict(strict=True, extra="allow")

    type: Literal["text", "json_object", "json_schema", "regex", "grammar", "choice"]


class SamplingFields(_Body):
    """What every generation request shares (chat and completions)."""

    model: str | None = None
    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    response_format: ResponseFormat | None = None
    user: str | None = None
    # vLLM's constrained-output extras (see ember/server/structured.py).
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    guided_choice: list[str] | None = None
    structured_outputs: dict[str, Any] | None = None

    def constraint_extras(self) -> dict[str, Any]:
        """vLLM's constrained-output fields that are set."""
        names = ("guided_json", "guided_regex", "guided_grammar", "guided_choice")
        values = {name: getattr(self, name) for name in (*names, "structured_outputs")}
        return {name: value for name, value in values.items() if value is not None}

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


# -- chat ----------------------------------------------------------------------------------


class ContentPart(_Body):
    model_config = ConfigDict(strict=True, extra="allow")

    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def for_template(self, index: int) -> dict[str, Any]:
        """The message as chat templates expect it (text content, system for developer)."""
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": _text_content(self.content, index),
        }
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls is not None:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


def _text_content(content: str | list[ContentPart] | None, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part_index, part in enumerate(content):
        if part.type not in ("text", "input_text") or part.text is None:
            raise bad_request(
                f"content parts of type {part.type!r} are not supported (text only)",
                param=f"messages.{index}.content.{part_index}",
            )
        texts.append(part.text)
    return "\n".join(texts)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.for_template(i) for i, m in enumerate(self.messages)]

    def wanted_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else (self.max_tokens)
        )

    def wanted_logprobs(self, limits: Limits) -> int | None:
        if self.top_logprobs is not None:
            _check_count("top_logprobs", self.top_logprobs, limits.max_logprobs)
            if not self.logprobs:
                raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
        if not self.logprobs:
            return None
        return self.top_logprobs or 0


# -- completions ---------------------------------------------------------------------------

PromptValue = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: PromptValue
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


# -- embeddings ----------------------------------------------------------------------------


class EmbeddingRequest(_Body):
    model: str | None = None
    input: PromptValue
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


# -- tokenizer endpoints (vLLM's shapes) ---------------------------------------------------


class TokenizeCompletionRequest(_Body):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(_Body):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool = False
    return_token_strs: bool = False
    chat_template_kwargs: dict[str, Any] | None = None


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]


# -- to SamplingParams ---------------------------------------------------------------------


def _check_count(name: str, value: int, most: int) -> None:
    if not 0 <= value <= most:
        raise bad_request(f"{name} must be in [0, {most}], got {value}", name)


def check_limits(body: SamplingFields, limits: Limits, max_tokens: int | None) -> None:
    """The server's caps (the engine's own checks come after)."""
    if not 1 <= body.n <= limits.max_n:
        raise bad_request(f"n must be in [1, {limits.max_n}], got {body.n}", "n")
    if max_tokens is not None and limits.max_tokens is not None and max_tokens > limits.max_tokens:
        raise bad_request(
            f"max_tokens is {max_tokens}, but this server allows at most {limits.max_tokens}",
            "max_tokens",
        )
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stops) > limits.max_stop:
        raise bad_request(
            f"stop has {len(stops)} strings; at most {limits.max_stop} are allowed", "stop"
        )
    if body.stop_token_ids is not None and len(body.stop_token_ids) > limits.max_stop:
        raise bad_request(
            f"stop_token_ids has {len(body.stop_token_ids)} ids; at most {limits.max_stop} "
            "are allowed",
            "stop_token_ids",
        )
    if body.logit_bias is not None and len(body.logit_bias) > limits.max_logit_bias:
        raise bad_request(
            f"logit_bias has {len(body.logit_bias)} entries; at most {limits.max_logit_bias} "
            "are allowed",
            "logit_bias",
        )
    if body.prompt_logprobs is not None:
        _check_count("prompt_logprobs", body.prompt_logprobs, limits.max_logprobs)


def default_max_tokens(
    wanted: int | None, prompt_tokens: int, max_model_len: int, limits: Limits
) -> int | None:
    """max_tokens for the engine: what the client asked, else the room left in the context
    (capped by the server's limit)."""
    if wanted is not None:
        return wanted
    if limits.max_tokens is None:
        return None
    room = max_model_len - prompt_tokens
    return min(limits.max_tokens, room) if room > 0 else None


def logit_bias_ids(body: SamplingFields) -> dict[int, float] | None:
    if body.logit_bias is None:
        return None
    biases: dict[int, float] = {}
    for key, bias in body.logit_bias.items():
        if not key.isdigit():
            raise bad_request(f"logit_bias keys must be token ids, got {key!r}", "logit_bias")
        biases[int(key)] = bias
    return biases


def sampling_params(
    body: SamplingFields,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    prompt_logprobs: int | None,
    structured_outputs: StructuredOutputs | None = None,
) -> SamplingParams:
    """SamplingParams for one prompt of `body` (SamplingParamsError, a RequestError, is a 400).

    Defaults are OpenAI's: temperature 1, top_p 1, no penalties.
    """

    def given(value: float | int | None, default: float | int) -> Any:
        return default if value is None else value

    try:
        return SamplingParams(
            n=body.n,
            temperature=given(body.temperature, 1.0),
            top_p=given(body.top_p, 1.0),
            top_k=given(body.top_k, 0),
            min_p=given(body.min_p, 0.0),
            presence_penalty=given(body.presence_penalty, 0.0),
            frequency_penalty=given(body.frequency_penalty, 0.0),
            repetition_penalty=given(body.repetition_penalty, 1.0),
            logit_bias=logit_bias_ids(body),
            seed=body.seed,
            stop=body.stop,
            stop_token_ids=body.stop_token_ids,
            max_tokens=max_tokens,
            min_tokens=body.min_tokens,
            ignore_eos=body.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            include_stop_str_in_output=body.include_stop_str_in_output,
            skip_special_tokens=body.skip_special_tokens,
            structured_outputs=structured_outputs,
        )
    except ValueError as exc:  # SamplingParamsError: "<field> must be ..."
        field = str(exc).split(" ", 1)[0]
        param = field if field in type(body).model_fields else None
        raise ApiError(400, str(exc), param=param) from None
