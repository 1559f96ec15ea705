"""GBNF (llama.cpp's grammar dialect, as xgrammar reads it) -> llguidance's Lark, character by
character.

GBNF is a context-free grammar over characters: `[a-z]+ "ing"` matches "singing". llguidance
splits a grammar into lexemes and a parser, and a lexeme matches greedily, so the same rule
written with a multi-character lexeme (`/[a-z]+/ "ing"`, which llguidance's own converter
produces) refuses "singing". Here every terminal is one character - literals are split, a
character class is one character - and every rule stays a parser rule, so the parser sees the
grammar exactly as written.
"""

from __future__ import annotations

import json
import re

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


class GbnfError(ValueError):
    """The text is not a GBNF grammar Ember can convert (the message names where)."""


def gbnf_to_lark(text: str) -> str:
    """The Lark grammar (start rule = GBNF's root) of a GBNF grammar; GbnfError if malformed."""
    return _Parser(text).grammar()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.names: dict[str, str] = {}
        self.referenced: dict[str, int] = {}

    def grammar(self) -> str:
        rules: list[str] = []
        defined: set[str] = set()
        self._space(newlines=True)
        while self.pos < len(self.text):
            name = self._name()
            self._space(newlines=False)
            if not self.text.startswith("::=", self.pos):
                raise self._error("expected ::=")
            self.pos += 3
            self._space(newlines=True)
            body = self._alternatives(nested=False)
            if name in defined:
                raise self._error(f"rule {name!r} is defined twice")
            defined.add(name)
            rules.append(f"{self._rule_name(name)}: {body}")
            self._space(newlines=True)
        if "root" not in defined:
            raise GbnfError("the grammar has no root rule")
        for name, at in self.referenced.items():
            if name not in defined:
                self.pos = at
                raise self._error(f"rule {name!r} is not defined")
        return "\n".join(rules) + "\n"

    def _rule_name(self, name: str) -> str:
        if name == "root":
            return "start"
        if name not in self.names:  # GBNF names may hold "-" and capitals; Lark rules may not
            self.names[name] = f"r{len(self.names)}_{re.sub('[^a-z0-9_]', '_', name.lower())}"
        return self.names[name]

    def _alternatives(self, nested: bool) -> str:
        options = [self._sequence(nested)]
        while True:
            # an alternative may also start a line of its own ("    | ...")
            before = self.pos
            self._space(newlines=True)
            if self._peek() != "|":
                self.pos = before
                break
            self.pos += 1
            self._space(newlines=True)
            options.append(self._sequence(nested))
        return options[0] if len(options) == 1 else " | ".join(options)

    def _sequence(self, nested: bool) -> str:
        items: list[str] = []
        while True:
            char = self._peek()
            if char == '"':
                item = self._literal()
            elif char == "[":
                item = self._char_class()
            elif char == ".":
                self.pos += 1
                item = "/(?s:.)/"
            elif char == "(":
                self.pos += 1
                self._space(newlines=True)
                item = f"({self._alternatives(nested=True)})"
                if self._peek() != ")":
                    raise self._error("expected )")
                self.pos += 1
            elif char and _NAME.match(char) and not self._starts_rule():
                start = self.pos
                name = self._name()
                self.referenced.setdefault(name, start)
                item = self._rule_name(name)
            else:
                break
            items.append(self._repetition(item))
            self._space(newlines=nested)
        return " ".join(items) if items else '""'

    def _starts_rule(self) -> bool:
        """At top level a newline ends a rule; this catches a name that begins the next one."""
        match = _NAME.match(self.text, self.pos)
        rest = self.text[match.end() :] if match else ""
        return rest.lstrip(" \t").startswith("::=")

    def _repetition(self, item: str) -> str:
        char = self._peek()
        if char in ("*", "+", "?"):
            self.pos += 1
            return f"({item}){char}"
        if char != "{":
            return item
        match = re.compile(r"\{\s*(\d+)\s*(,\s*(\d*)\s*)?\}").match(self.text, self.pos)
        if match is None:
            raise self._error("expected {m}, {m,} or {m,n}")
        self.pos = match.end()
        low, comma, high = match.group(1), match.group(2), match.group(3)
        upper = high if comma else low
        if upper and int(upper) < int(low):
            raise self._error("a repetition's maximum is below its minimum")
        return f"({item}){{{low},{upper or ''}}}"

    def _literal(self) -> str:
        self.pos += 1  # the opening quote
        chars: list[str] = []
        while self._peek() != '"':
            chars.append(self._char())
        self.pos += 1
        return " ".join(json.dumps(char) for char in chars) if chars else '""'

    def _char_class(self) -> str:
        self.pos += 1  # [
        negated = self._peek() == "^"
        if negated:
            self.pos += 1
        parts: list[str] = []
        while self._peek() != "]":
            low = self._char()
            if self._peek() == "-" and self.text[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.pos += 1
                high = self._char()
                if ord(high) < ord(low):
                    raise self._error("a character range runs backwards")
                parts.append(f"{_hex(low)}-{_hex(high)}")
            else:
                parts.append(_hex(low))
        self.pos += 1
        if not parts:
            raise self._error("an empty character class matches nothing")
        return "/[" + ("^" if negated else "") + "".join(parts) + "]/"

    def _char(self) -> str:
        if self.pos >= len(self.text):
            raise self._error("unexpected end of grammar")
        char = self.text[self.pos]
        self.pos += 1
        if char != "\\":
            return char
        escape = self._peek()
        self.pos += 1
        if escape in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[escape]
        if escape in _HEX_ESCAPES:
            digits = self.text[self.pos : self.pos + _HEX_ESCAPES[escape]]
            if len(digits) != _HEX_ESCAPES[escape] or not all(
                c in "0123456789abcdefABCDEF" for c in digits
            ):
                raise self._error(f"bad \\{escape} escape")
            self.pos += len(digits)
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise self._error(f"\\{escape}{digits} is not a character")
            return chr(code)
        raise self._error(f"unknown escape \\{escape}")

    def _name(self) -> str:
        match = _NAME.match(self.text, self.pos)
        if match is None:
            raise self._error("expected a rule name")
        self.pos = match.end()
        return match.group()

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _space(self, newlines: bool) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self.pos += 1
            elif char == "#":
                while self.pos < len(self.text) and self.text[self.pos] not in "\r\n":
                    self.pos += 1
            else:
                return

    def _error(self, message: str) -> GbnfError:
        line = self.text.count("\n", 0, self.pos) + 1
        column = self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1
        return GbnfError(f"{message} at line {line}, column {column}")


def _hex(char: str) -> str:
    """`char` as a regex escape: safe inside a class and inside Lark's /.../."""
    return f"\\x{{{ord(char):X}}}"
