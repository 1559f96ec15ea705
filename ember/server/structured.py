"""Request fields -> the engine's StructuredOutputs (constrained output) and tool plans.

OpenAI's response_format ({"type": "text" | "json_object" | "json_schema"}) and vLLM's extras
(guided_json / guided_regex / guided_grammar / guided_choice, and the newer
"structured_outputs": {...}) become one StructuredOutputs. `checked_constraint` also asks the
grammar library whether it can follow the spec, on a worker thread (a large schema takes a
while), so a bad schema is a one-line 400 before the request is queued. Requests without a
constraint skip all of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ember.sampling_params import StructuredOutputs
from ember.server.errors import bad_request
from ember.server.tools import ToolPlan, checked, plan_tools

JSON_ANY_WHITESPACE = False
"""JSON from response_format uses json.dumps' single-line layout: small models keep to it far
better than to free whitespace."""

STRUCTURED_FIELDS = ("json", "json_object", "regex", "grammar", "choice", "structural_tag")

GUIDED_FIELDS = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_grammar": "grammar",
    "guided_choice": "choice",
}
"""vLLM's older extras and the StructuredOutputs field each one sets."""


def _field(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(name)
    extra = getattr(value, "model_extra", None) or {}
    return getattr(value, name, extra.get(name))


def structured_output_constraint(
    response_format: Any, extras: Mapping[str, Any] | None = None
) -> StructuredOutputs | None:
    """The constraint a request asks for (None: none), or a one-line 400.

    `response_format` is OpenAI's (a pydantic model or a dict); `extras` holds vLLM's fields
    (guided_* and structured_outputs) that are set. At most one constraint may be given.
    """
    found: list[tuple[str, StructuredOutputs]] = []
    from_format = _from_response_format(response_format)
    if from_format is not None:
        found.append(("response_format", from_format))
    for name, value in (extras or {}).items():
        if value is None:
            continue
        if name == "structured_outputs":
            found.append((name, _from_structured_outputs(value)))
        elif name in GUIDED_FIELDS:
            found.append((name, _build(name, **{GUIDED_FIELDS[name]: value})))
    if len(found) > 1:
        names = " and ".join(name for name, _ in found)
        raise bad_request(f"give one output constraint, not {names}", found[1][0])
    return found[0][1] if found else None


def _from_response_format(response_format: Any) -> StructuredOutputs | None:
    kind = _field(response_format, "type")
    if kind in (None, "text"):
        return None
    param = "response_format"
    if kind == "json_object":
        return _build(param, json_object=True, any_whitespace=JSON_ANY_WHITESPACE, strict=False)
    if kind == "json_schema":
        spec = _field(response_format, "json_schema")
        if not isinstance(spec, Mapping):
            raise bad_request(
                'response_format type "json_schema" needs a json_schema object', param
            )
        schema = spec.get("schema", spec.get("json_schema"))
        if schema is None:
            schema = {}  # OpenAI: no schema means any JSON value
        if not isinstance(schema, Mapping | str) or isinstance(schema, bool):
            raise bad_request("response_format.json_schema.schema must be an object", param)
        strict = spec.get("strict")
        return _build(param, json=schema, any_whitespace=JSON_ANY_WHITESPACE, strict=strict is True)
    if kind in ("regex", "grammar", "choice"):  # vLLM-style response_format extensions
        value = _field(response_format, kind)
        if value is None:
            value = _field(response_format, "value")
        return _build(param, **{kind: value})
    raise bad_request(f"response_format type {kind!r} is not supported", param)


def _from_structured_outputs(value: Any) -> StructuredOutputs:
    param = "structured_outputs"
    if not isinstance(value, Mapping):
        raise bad_request("structured_outputs must be an object", param)
    fields = dict(value)
    # vLLM's spellings of the options.
    if "disable_any_whitespace" in fields:
        fields["any_whitespace"] = not fields.pop("disable_any_whitespace")
    if "json_object" in fields and fields["json_object"] is None:
        fields.pop("json_object")
    for ignored in ("disable_additional_properties", "whitespace_pattern", "backend"):
        fields.pop(ignored, None)
    allowed = (*STRUCTURED_FIELDS, "any_whitespace", "strict")
    unknown = sorted(str(name) for name in fields if name not in allowed)
    if unknown:
        raise bad_request(
            f"structured_outputs has no field {unknown[0]!r}; use one of " + ", ".join(allowed),
            param,
        )
    fields = {k: v for k, v in fields.items() if v is not None or k not in STRUCTURED_FIELDS}
    if "json" in fields or "json_object" in fields:
        fields.setdefault("any_whitespace", JSON_ANY_WHITESPACE)
    return _build(param, **fields)


def _build(param: str, **fields: Any) -> StructuredOutputs:
    try:
        return StructuredOutputs(**fields)
    except (TypeError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else "invalid output constraint"
        raise bad_request(message, param) from None


async def checked_constraint(
    spec: StructuredOutputs | None, param: str = "response_format"
) -> StructuredOutputs | None:
    """`spec` once the grammar library accepted it (checked on a worker thread; cached)."""
    if spec is not None:
        await checked(spec, param)
    return spec


def check_tools(
    tools: list[dict[str, Any]] | None, tool_choice: Any, parallel_tool_calls: bool | None = None
) -> ToolPlan | None:
    """The request's tool plan (None without tools or with tool_choice "none"), or a 400.
    Chat routes use ember.server.tools.prepare_tools, which does this and the rest."""
    return plan_tools(tools, tool_choice, parallel_tool_calls=parallel_tool_calls)
