"""StructuredOutputs pieces as llguidance grammar text (its Lark dialect and JSON options).

- JSON schemas: xgrammar's layout options become llguidance's "x-guidance" options, and strict
  mode (no properties beyond the listed ones unless the schema says otherwise) is written into
  the schema itself, since llguidance follows JSON Schema's default of allowing them;
- choices: an alternation of string literals;
- regexes: Lark terminals, with \\d and \\w meaning ASCII digits and word characters as in
  xgrammar (llguidance's Rust regexes would take any Unicode digit);
- structural tags (xgrammar's format, which the server builds for forced tool calls): the formats
  that have a Lark equivalent, free text before a trigger becoming a lazy lexeme. Token-level
  formats, XML argument styles and the like are refused with a one-line reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ember.errors import RequestError
from ember.structured.gbnf_lark import gbnf_to_lark

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# JSON whitespace (space, newline, carriage return, tab), as llguidance's own default
_JSON_WHITESPACE = r"[\x20\x0A\x0D\x09]"
_ANY_TEXT = "/(?s:.*)/"
# keywords whose value is one subschema, a list of them, or a name -> subschema map
_ONE_SCHEMA = (
    "additionalProperties",
    "items",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "additionalItems",
)
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def json_options(any_whitespace: bool, max_whitespace: int | None = None) -> JsonCompileOptions:
    """llguidance's JSON options: any whitespace between tokens, or exactly json.dumps'
    single-line layout (", " and ": "), as xgrammar's any_whitespace does; keywords llguidance
    does not implement (uniqueItems, unknown formats, ...) are ignored, as xgrammar ignores
    them, rather than refused (oneOf is then read as anyOf)."""
    if not any_whitespace:
        return {
            "whitespace_flexible": False,
            "item_separator": ", ",
            "key_separator": ": ",
            "lenient": True,
        }
    if max_whitespace is not None:
        pattern = f"{_JSON_WHITESPACE}{{1,{max_whitespace}}}"
        return {"whitespace_pattern": pattern, "lenient": True}
    return {"whitespace_flexible": True, "lenient": True}


def strict_schema(schema: Any) -> Any:
    """A copy of `schema` where objects admit only their listed properties and arrays only
    their listed prefix items, unless the schema says otherwise (xgrammar's strict mode).

    allOf members are left open: llguidance intersects them, so each one closed would exclude
    the properties of the others.
    """
    if not isinstance(schema, dict):
        return schema
    result = dict(schema)
    for key in _ONE_SCHEMA:
        if key in result:
            result[key] = strict_schema(result[key])
    for key in _SCHEMA_LISTS:
        if isinstance(result.get(key), list):
            result[key] = [strict_schema(item) for item in result[key]]
    for key in _SCHEMA_MAPS:
        if isinstance(result.get(key), dict):
            result[key] = {name: strict_schema(item) for name, item in result[key].items()}
    if isinstance(result.get("allOf"), list):
        result["allOf"] = [_strict_members(item) for item in result["allOf"]]
    types = result.get("type")
    is_object = (
        "properties" in result
        or types == "object"
        or (isinstance(types, list) and "object" in types)
    )
    closing = ("additionalProperties", "unevaluatedProperties", "patternProperties")
    if is_object and not any(key in result for key in closing):
        result["additionalProperties"] = False
    if "prefixItems" in result and "items" not in result and "unevaluatedItems" not in result:
        result["items"] = False
    return result


def _strict_members(schema: Any) -> Any:
    """strict_schema for what lies inside `schema`, leaving `schema` itself open."""
    closed = strict_schema(schema)
    if isinstance(closed, dict) and isinstance(schema, dict):
        for key in ("additionalProperties", "items"):
            if key not in schema:
                closed.pop(key, None)
    return closed


def choice_lark(choices: list[str]) -> str:
    """A Lark grammar whose start is exactly one of `choices` (JSON string escapes are Lark's)."""
    return "start: " + " | ".join(json.dumps(choice) for choice in choices)


def regex_terminal(pattern: str) -> str:
    """`pattern` as a Lark /regex/ terminal."""
    import llguidance

    return "/" + llguidance.regex_to_lark(pattern, "dw") + "/"


def structural_tag_grammar(text: str, json_layout: JsonCompileOptions, strict: bool) -> str:
    """xgrammar's structural tag JSON as an llguidance grammar (Lark text, or the grammar list
    when an EBNF piece needs a grammar of its own); RequestError for what has no equivalent."""
    import llguidance

    tag = json.loads(text)
    if (
        not isinstance(tag, dict)
        or tag.get("type") != "structural_tag"
        or not isinstance(tag.get("format"), dict)
    ):
        raise _unsupported('it must be {"type": "structural_tag", "format": {...}}')
    writer = _LarkWriter(json_layout, strict)
    start = writer.expression(tag["format"], at_end=True)
    lark = "\n".join([f"start: {start}", *writer.rules])
    if not writer.subgrammars:
        return llguidance.LLMatcher.grammar_from_lark(lark)
    return json.dumps({"grammars": [{"lark_grammar": lark}, *writer.subgrammars]})


def _unsupported(reason: str) -> RequestError:
    return RequestError(f"structured_outputs.structural_tag cannot be used: {reason}")


class _LarkWriter:
    """Turns structural-tag formats into Lark expressions, adding the rules they need."""

    def __init__(self, json_layout: JsonCompileOptions, strict: bool) -> None:
        self.json_layout = json_layout
        self.strict = strict
        self.rules: list[str] = []
        self.subgrammars: list[dict[str, str]] = []
        self._names = 0

    def expression(self, fmt: Any, at_end: bool) -> str:
        """Lark for `fmt`; `at_end`: nothing can follow it (free text may then run to the end,
        which a greedy lexeme cannot do anywhere else)."""
        if not isinstance(fmt, dict):
            raise _unsupported(f"a format must be an object, got {fmt!r:.60}")
        kind = fmt.get("type")
        handlers: dict[str, Callable[[dict[str, Any], bool], str]] = {
            "const_string": lambda f, _: json.dumps(_field(f, "value", str)),
            "json_schema": lambda f, _: self._json_schema(f),
            "regex": lambda f, _: regex_terminal(_field(f, "pattern", str)),
            "grammar": lambda f, _: self._grammar(_field(f, "grammar", str)),
            "sequence": self._sequence,
            "or": lambda f, end: self._group(" | ", f, end),
            "optional": lambda f, end: f"({self.expression(f.get('content'), end)})?",
            "plus": lambda f, _: f"({self.expression(f.get('content'), False)})+",
            "star": lambda f, _: f"({self.expression(f.get('content'), False)})*",
            "repeat": self._repeat,
            "tag": lambda f, _: self._tag(f),
            "any_text": self._any_text,
            "triggered_tags": self._triggered_tags,
            "tags_with_separator": lambda f, _: self._tags_with_separator(f),
        }
        handler = handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise _unsupported(f"the llguidance grammar backend has no format {kind!r}")
        return handler(fmt, at_end)

    def _name(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    def _rule(self, body: str, options: str = "") -> str:
        name = self._name("r")
        self.rules.append(f"{name}{options}: {body}")
        return name

    def _json_schema(self, fmt: dict[str, Any]) -> str:
        if fmt.get("style", "json") != "json" or fmt.get("excludes") or fmt.get("any_order"):
            raise _unsupported(
                "the llguidance grammar backend takes json_schema only in the plain json style"
            )
        schema = fmt.get("json_schema")
        if schema is True:
            schema = {}
        if not isinstance(schema, dict):
            raise _unsupported("json_schema must be an object (or true)")
        if self.strict:
            schema = strict_schema(schema)
        layout = self.json_layout
        if fmt.get("max_whitespace_cnt") is not None and layout.get("whitespace_flexible"):
            layout = json_options(True, int(fmt["max_whitespace_cnt"]))
        return self._rule("%json " + json.dumps({**schema, "x-guidance": layout}))

    def _grammar(self, ebnf: str) -> str:
        name = self._name("g")
        self.subgrammars.append({"name": name, "lark_grammar": gbnf_to_lark(ebnf)})
        return "@" + name

    def _sequence(self, fmt: dict[str, Any], at_end: bool) -> str:
        return self._group(" ", fmt, at_end)

    def _group(self, joiner: str, fmt: dict[str, Any], at_end: bool) -> str:
        elements = _field(fmt, "elements", list)
        if not elements:
            return '""'
        last = len(elements) - 1
        # in a sequence only the last element ends the output; every alternative of an "or" does
        parts = [
            self.expression(element, at_end and (joiner != " " or i == last))
            for i, element in enumerate(elements)
        ]
        return "(" + joiner.join(parts) + ")"

    def _repeat(self, fmt: dict[str, Any], at_end: bool) -> str:
        low, high = _field(fmt, "min", int), _field(fmt, "max", int)
        bounds = f"{{{low},}}" if high == -1 else f"{{{low},{high}}}"
        return f"({self.expression(fmt.get('content'), False)}){bounds}"

    def _any_text(self, fmt: dict[str, Any], at_end: bool) -> str:
        if not at_end:
            raise _unsupported(
                "in the llguidance grammar backend, any_text must end the output or be a tag's "
                "content"
            )
        _no_limits(fmt)
        return self._free_text(fmt.get("excludes") or [])

    def _free_text(self, excludes: list[str]) -> str:
        """A terminal for any text that contains none of `excludes`."""
        name = self._name("TEXT")
        body = _ANY_TEXT
        if excludes:
            banned = " | ".join(json.dumps(_text(item)) for item in excludes)
            # & with /(?s:.*)/ again: a negation alone would also admit invalid UTF-8
            body = f"{_ANY_TEXT} & ~({_ANY_TEXT} ({banned}) {_ANY_TEXT})"
        self.rules.append(f"{name}: {body}")
        return name

    def _ends(self, fmt: dict[str, Any]) -> str:
        end = fmt.get("end")
        ends = end if isinstance(end, list) else [end]
        if not ends or not all(isinstance(item, str) for item in ends):
            raise _unsupported("the llguidance grammar backend takes a tag's end only as text")
        return "(" + " | ".join(json.dumps(item) for item in ends) + ")"

    def _tag(self, fmt: dict[str, Any], begin: str | None = None) -> str:
        """begin content end; `begin` replaces the tag's own (a trigger already matched)."""
        if begin is None:
            begin = _tag_begin(fmt)
        content = fmt.get("content")
        opening = json.dumps(begin) if begin else ""
        if isinstance(content, dict) and content.get("type") == "any_text":
            # Text up to the first end string: a lazy lexeme stops there.
            _no_limits(content)
            text = self._free_text(content.get("excludes") or [])
            return f"{opening} {self._rule(f'{text} {self._ends(fmt)}', '[lazy]')}"
        return f"{opening} {self.expression(content, False)} {self._ends(fmt)}"

    def _triggered_tags(self, fmt: dict[str, Any], at_end: bool) -> str:
        triggers = [_text(t) for t in _field(fmt, "triggers", list)]
        tags = [tag for tag in _field(fmt, "tags", list) if isinstance(tag, dict)]
        if not triggers or not tags:
            raise _unsupported("triggered_tags needs triggers and tags")
        at_least_one = bool(fmt.get("at_least_one"))
        only_one = bool(fmt.get("stop_after_first"))
        if at_least_one and only_one:
            return self._one_of_tags(tags)
        if not at_end:
            raise _unsupported(
                "in the llguidance grammar backend, triggered_tags must end the output"
            )
        # Free text may hold no trigger (one starts a tag) and none of the excluded strings.
        free = self._free_text(triggers + list(fmt.get("excludes") or []))
        heads: dict[str, str] = {}
        calls = []
        for tag in tags:
            begin = _tag_begin(tag)
            trigger = next((t for t in triggers if begin.startswith(t)), None)
            if trigger is None:
                raise _unsupported(f"tag begin {begin!r:.60} starts with none of the triggers")
            if trigger not in heads:  # free text up to the trigger's first appearance
                heads[trigger] = self._rule(f"{free} {json.dumps(trigger)}", "[lazy]")
            calls.append(f"{heads[trigger]} {self._tag(tag, begin[len(trigger) :])}")
        call = self._rule(" | ".join(calls))
        if only_one:
            return f"({call} | {free})"
        if at_least_one:
            return f"{self._one_of_tags(tags)} {call}* {free}"
        return f"{call}* {free}"

    def _tags_with_separator(self, fmt: dict[str, Any]) -> str:
        tags = [tag for tag in _field(fmt, "tags", list) if isinstance(tag, dict)]
        if not tags:
            raise _unsupported("tags_with_separator needs tags")
        one = self._one_of_tags(tags)
        if fmt.get("stop_after_first"):
            several = one
        else:
            several = f"{one} ({json.dumps(_field(fmt, 'separator', str))} {one})*"
        return several if fmt.get("at_least_one") else f"({several})?"

    def _one_of_tags(self, tags: list[dict[str, Any]]) -> str:
        return self._rule(" | ".join(self._tag(tag) for tag in tags))


def _field(fmt: dict[str, Any], name: str, kind: type) -> Any:
    value = fmt.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _unsupported(f"a {fmt.get('type')!r} format needs {name!r} as {kind.__name__}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _unsupported(f"expected a non-empty string, got {value!r:.60}")
    return value


def _tag_begin(tag: dict[str, Any]) -> str:
    begin = tag.get("begin")
    if not isinstance(begin, str):
        raise _unsupported("the llguidance grammar backend takes a tag's begin only as text")
    return begin


def _no_limits(fmt: dict[str, Any]) -> None:
    if fmt.get("max_tokens") is not None or fmt.get("max_chars") is not None:
        raise _unsupported("the llguidance grammar backend has no any_text length limits")
