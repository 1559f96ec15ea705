"""Sampling parameters of one generation request, validated on construction.

The fields and their meaning follow vLLM's ``SamplingParams`` (which follows the OpenAI
completions API). A temperature below ``SAMPLING_EPS`` means greedy decoding; in that case the
truncation settings (top_p, top_k, min_p) are reset to their neutral values, as vLLM does, so the
sampler never has to ask "greedy but with top_k=5?".
"""

from __future__ import annotations

import dataclasses
import enum
import json as _json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ember.errors import RequestError

SAMPLING_EPS = 1e-5
"""Temperatures below this are greedy (vLLM's _SAMPLING_EPS)."""

MAX_LOGPROBS = 20
"""Most top alternatives a request may ask for per position (OpenAI's and vLLM's default limit)."""

_SEED_MIN = -(2**63)
_SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed accepts [-2**63, 2**64)


class SamplingParamsError(RequestError, ValueError):
    """A sampling value is out of range: a RequestError for the user, a ValueError for Python."""


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


def _fail(name: str, rule: str, value: object) -> SamplingParamsError:
    shown = repr(value)
    if len(shown) > 120:  # a whole JSON schema does not belong in a one-line error
        shown = shown[:117] + "..."
    return SamplingParamsError(f"{name} must be {rule}, got {shown}")


def _as_float(name: str, value: object) -> float:
    # bool is an int subclass; True as a temperature is a caller bug, not 1.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, "a number", value)
    result = float(value)
    if not math.isfinite(result):
        raise _fail(name, "a finite number", value)
    return result


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, "an integer", value)
    return value


def _in_range(name: str, value: object, low: float, high: float) -> float:
    result = _as_float(name, value)
    if not low <= result <= high:
        raise _fail(name, f"in [{low:g}, {high:g}]", value)
    return result


def _optional_count(name: str, value: object, high: int) -> int | None:
    if value is None:
        return None
    count = _as_int(name, value)
    if not 0 <= count <= high:
        raise _fail(name, f"None or an integer in [0, {high}]", value)
    return count


def _token_id(name: str, value: object) -> int:
    token = _as_int(name, value)
    if token < 0:
        raise _fail(name, "non-negative token ids", value)
    return token


def _normalise_stop(value: object) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence):
        raise _fail("stop", "a string, a list of strings or None", value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise _fail("stop", "non-empty strings", item)
    return list(items)


def _normalise_stop_token_ids(value: object) -> list[int]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _fail("stop_token_ids", "a list of token ids or None", value)
    # dict.fromkeys drops repeats but keeps the caller's order
    return list(dict.fromkeys(_token_id("stop_token_ids", item) for item in value))


def _normalise_logit_bias(value: object) -> dict[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _fail("logit_bias", "a mapping of token id to bias or None", value)
    result: dict[int, float] = {}
    for key, bias in value.items():
        # JSON object keys arrive as strings ("50256": -100)
        token = int(key) if isinstance(key, str) and key.isdigit() else key
        result[_token_id("logit_bias", token)] = _as_float(f"logit_bias[{key!r}]", bias)
    return result


STRUCTURED_KINDS = ("json", "json_object", "regex", "grammar", "choice", "structural_tag")
"""The kinds of constraint StructuredOutputs can carry; a request sets exactly one."""


def _json_spec(name: str, value: object) -> str:
    """A JSON object given as a dict or as JSON text -> its JSON text (key order kept: it is
    the order the output's properties follow)."""
    if isinstance(value, str):
        try:
            parsed = _json.loads(value)
        except ValueError as exc:
            raise _fail(name, f"valid JSON ({exc})", value) from None
        if not isinstance(parsed, dict):
            raise _fail(name, "a JSON object", value)
        return value
    if not isinstance(value, Mapping):
        raise _fail(name, "a JSON object (a dict or JSON text)", value)
    try:
        return _json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(name, f"JSON-serialisable ({exc})", value) from None


@dataclass(frozen=True, init=False)
class StructuredOutputs:
    """A constraint on the generated text, enforced token by token by a grammar.

    Exactly one kind is set (see STRUCTURED_KINDS). The engine compiles it for the model's
    vocabulary (ember.structured); a spec the grammar library rejects fails add_request with a
    one-line RequestError. The output ends with finish_reason "stop" as soon as the grammar is
    complete and nothing more may follow.
    """

    json: Mapping[str, Any] | str | None
    """A JSON schema (dict or JSON text): the output is one JSON value valid under it."""
    json_object: bool
    """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
    regex: str | None
    """The output fully matches this regular expression."""
    grammar: str | None
    """An EBNF grammar in llama.cpp's GBNF dialect; the output matches its `root` rule."""
    choice: list[str] | None
    """The output is exactly one of these strings."""
    structural_tag: Mapping[str, Any] | str | None
    """An xgrammar structural tag (dict or JSON text): free text with constrained segments,
    e.g. tool-call arguments that must match a schema once a trigger string appears."""
    any_whitespace: bool
    """JSON kinds: allow any whitespace between tokens (True), or only the single-line layout
    of json.dumps (False: ", " and ": " separators), which keeps small models from
    wandering off into whitespace."""
    strict: bool
    """JSON kinds: objects may hold only the properties the schema lists (OpenAI's strict
    mode); False follows JSON Schema's default of allowing additional properties."""

    def __init__(
        self,
        *,
        json: Mapping[str, Any] | str | None = None,
        json_object: bool = False,
        regex: str | None = None,
        grammar: str | None = None,
        choice: Sequence[str] | None = None,
        structural_tag: Mapping[str, Any] | str | None = None,
        any_whitespace: bool = True,
        strict: bool = True,
    ) -> None:
        values, kind, spec = _validate_structured(locals())
        for name, value in values.items():
            object.__setattr__(self, name, value)
        # Fixed now: a caller mutating its schema dict later must not change the constraint.
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_spec", spec)

    @property
    def kind(self) -> str:
        """Which constraint is set: one of STRUCTURED_KINDS."""
        return str(self.__dict__["_kind"])

    @property
    def spec(self) -> str:
        """The constraint as text: JSON for json and structural_tag, the pattern or grammar as
        given, the choices as a JSON list, "" for json_object."""
        return str(self.__dict__["_spec"])


def _validate_structured(args: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """(field values, kind, spec text) of StructuredOutputs' arguments."""
    prefix = "structured_outputs."
    del args["self"]
    for name in ("json_object", "any_whitespace", "strict"):
        if not isinstance(args[name], bool):
            raise _fail(prefix + name, "True or False", args[name])
    for name in ("regex", "grammar"):
        value = args[name]
        if value is not None and (not isinstance(value, str) or not value):
            raise _fail(prefix + name, "a non-empty string", value)
    texts = {
        name: _json_spec(prefix + name, args[name])
        for name in ("json", "structural_tag")
        if args[name] is not None
    }
    choice = args["choice"]
    if choice is not None:
        if isinstance(choice, str) or not isinstance(choice, Sequence) or not choice:
            raise _fail(prefix + "choice", "a non-empty list of strings", choice)
        for item in choice:
            if not isinstance(item, str) or not item:
                raise _fail(prefix + "choice", "non-empty strings", item)
        choice = list(choice)
    given = [
        kind
        for kind in STRUCTURED_KINDS
        if (args[kind] is True if kind == "json_object" else args[kind] is not None)
    ]
    if len(given) != 1:
        kinds = ", ".join(STRUCTURED_KINDS)
        got = " and ".join(given) if given else "none"
        raise SamplingParamsError(f"structured_outputs needs exactly one of {kinds}; got {got}")
    kind = given[0]
    if kind in texts:
        spec = texts[kind]
    elif kind == "choice":
        spec = _json.dumps(choice, ensure_ascii=False)
    else:
        spec = args[kind] if kind != "json_object" else ""
    for name, text in texts.items():
        if not isinstance(args[name], str):
            args[name] = _json.loads(text)  # a private copy of the caller's dict
    return {**args, "choice": choice}, kind, spec


def _normalise_structured(value: object) -> StructuredOutputs | None:
    if value is None or isinstance(value, StructuredOutputs):
        return value
    if not isinstance(value, Mapping):
        rule = "a StructuredOutputs, a dict of its fields or None"
        raise _fail("structured_outputs", rule, value)
    names = [field.name for field in dataclasses.fields(StructuredOutputs)]
    unknown = sorted(str(key) for key in value if key not in names)
    if unknown:
        raise SamplingParamsError(
            f"structured_outputs has no field {unknown[0]!r}; use one of " + ", ".join(names)
        )
    return StructuredOutputs(**value)


@dataclass(frozen=True, init=False)
class SamplingParams:
    """How to pick each next token of one request, and when to stop.

    Construct with keyword arguments; every value is checked and a bad one raises
    SamplingParamsError (a RequestError and a ValueError) naming the field and the value.
    """

    n: int
    """Completions to produce for the prompt (must be 1 when greedy: copies would be identical)."""
    temperature: float
    """Divides the logits before sampling; below SAMPLING_EPS means greedy (argmax)."""
    top_p: float
    """Keep the smallest set of most likely tokens whose probability reaches top_p; in (0, 1]."""
    top_k: int
    """Keep the top_k most likely tokens; 0 disables (-1 is accepted and stored as 0)."""
    min_p: float
    """Drop tokens whose probability is below min_p times the top token's; in [0, 1]."""
    repetition_penalty: float
    """> 1 discourages tokens seen in prompt or output (positive logits divided, negative
    multiplied), < 1 encourages them; 1 disables."""
    presence_penalty: float
    """Subtracted once from the logit of every token already generated; in [-2, 2]."""
    frequency_penalty: float
    """Subtracted per occurrence from the logit of every token already generated; in [-2, 2]."""
    seed: int | None
    """Seeds a per-request generator so the tokens do not depend on the rest of the batch."""
    stop: list[str]
    """Strings that end generation when produced (kept in the text only with
    include_stop_str_in_output)."""
    stop_token_ids: list[int]
    """Token ids that end generation when produced (in addition to EOS)."""
    ignore_eos: bool
    """Keep generating after EOS."""
    max_tokens: int | None
    """Most tokens to generate; None means until the context is full."""
    min_tokens: int
    """EOS and stop_token_ids are masked until this many tokens were generated."""
    logprobs: int | None
    """Per generated token, return its logprob and rank plus this many top alternatives."""
    prompt_logprobs: int | None
    """Per prompt token (after the first), return its logprob and rank plus this many top
    alternatives."""
    include_stop_str_in_output: bool
    """Keep the matched stop string in the returned text."""
    skip_special_tokens: bool
    """Leave special tokens out of the returned text."""
    logit_bias: dict[int, float] | None
    """Added to the logits of these token ids before anything else."""
    structured_outputs: StructuredOutputs | None
    """Constrain the output to a JSON schema, regex, grammar or fixed choices (a dict of
    StructuredOutputs fields is accepted too)."""

    def __init__(
        self,
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool = False,
        max_tokens: int | None = None,
        min_tokens: int = 0,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
        logit_bias: Mapping[int, float] | Mapping[str, float] | None = None,
        structured_outputs: StructuredOutputs | Mapping[str, Any] | None = None,
    ) -> None:
        values = _validate(locals())
        for name, value in values.items():
            # frozen dataclass: the constructor is the one place allowed to write
            object.__setattr__(self, name, value)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    @property
    def sampling_type(self) -> SamplingType:
        if self.is_greedy:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    @property
    def uses_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    def verify_vocab_size(self, vocab_size: int) -> None:
        """Reject token ids the model cannot produce (call once the model is known)."""
        for token in self.stop_token_ids:
            if token >= vocab_size:
                raise _fail("stop_token_ids", f"token ids below the vocab size {vocab_size}", token)
        for token in self.logit_bias or {}:
            if token >= vocab_size:
                raise _fail("logit_bias", f"token ids below the vocab size {vocab_size}", token)


def _validate(args: dict[str, Any]) -> dict[str, Any]:
    n = _as_int("n", args["n"])
    if n < 1:
        raise _fail("n", ">= 1", n)

    temperature = _as_float("temperature", args["temperature"])
    if temperature < 0:
        raise _fail("temperature", ">= 0", args["temperature"])
    top_p = _as_float("top_p", args["top_p"])
    if not 0.0 < top_p <= 1.0:
        raise _fail("top_p", "in (0, 1]", args["top_p"])
    top_k = _as_int("top_k", args["top_k"])
    if top_k < -1:
        raise _fail("top_k", "0 or -1 (disabled) or >= 1", top_k)
    top_k = max(top_k, 0)
    min_p = _in_range("min_p", args["min_p"], 0.0, 1.0)

    repetition_penalty = _as_float("repetition_penalty", args["repetition_penalty"])
    if repetition_penalty <= 0:
        raise _fail("repetition_penalty", "> 0", args["repetition_penalty"])
    presence_penalty = _in_range("presence_penalty", args["presence_penalty"], -2.0, 2.0)
    frequency_penalty = _in_range("frequency_penalty", args["frequency_penalty"], -2.0, 2.0)

    seed = args["seed"]
    if seed is not None:
        seed = _as_int("seed", seed)
        if seed == -1:  # vLLM and llama.cpp spell "no seed" as -1
            seed = None
        elif not _SEED_MIN <= seed <= _SEED_MAX:
            raise _fail("seed", f"an integer in [{_SEED_MIN}, {_SEED_MAX}] or None", seed)

    max_tokens = args["max_tokens"]
    if max_tokens is not None:
        max_tokens = _as_int("max_tokens", max_tokens)
        if max_tokens < 1:
            raise _fail("max_tokens", ">= 1 or None", max_tokens)
    min_tokens = _as_int("min_tokens", args["min_tokens"])
    if min_tokens < 0:
        raise _fail("min_tokens", ">= 0", min_tokens)
    if max_tokens is not None and min_tokens > max_tokens:
        raise _fail("min_tokens", f"<= max_tokens ({max_tokens})", min_tokens)

    flags = {}
    for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
        if not isinstance(args[name], bool):
            raise _fail(name, "True or False", args[name])
        flags[name] = args[name]

    if temperature < SAMPLING_EPS:
        if n > 1:
            raise _fail("n", "1 when sampling greedily (temperature 0)", n)
        # Greedy ignores truncation; neutral values keep the sampler free of special cases.
        top_p, top_k, min_p = 1.0, 0, 0.0

    return {
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty,
        "seed": seed,
        "stop": _normalise_stop(args["stop"]),
        "stop_token_ids": _normalise_stop_token_ids(args["stop_token_ids"]),
        "max_tokens": max_tokens,
        "min_tokens": min_tokens,
        "logprobs": _optional_count("logprobs", args["logprobs"], MAX_LOGPROBS),
        "prompt_logprobs": _optional_count(
            "prompt_logprobs", args["prompt_logprobs"], MAX_LOGPROBS
        ),
        "logit_bias": _normalise_logit_bias(args["logit_bias"]),
        "structured_outputs": _normalise_structured(args["structured_outputs"]),
        **flags,
    }
