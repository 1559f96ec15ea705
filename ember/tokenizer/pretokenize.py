"""Split text into words before BPE, as llama.cpp does for each `tokenizer.ggml.pre` value.

A pre-tokenizer is a list of rules applied in turn: each rule splits every piece left by the
previous one into its matches and the text between them (both kept). The three most common
rules (GPT-2, Llama-3, Qwen2 patterns) are hand-written scanners in llama.cpp, whose quirks
we follow; any other rule is a regular expression that llama.cpp runs with std::regex on a
"collapsed" copy of the text where each non-ASCII codepoint is replaced by one character
standing for its class, and `\\p{..}` in the pattern by that character plus the ASCII members.
We do the same with Python's `re` (ASCII mode, so `\\s` means what it means in C).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ember.errors import TokenizerError
from ember.tokenizer.unicode_classes import (
    LETTER,
    MARK,
    NUMBER,
    PUNCTUATION,
    SYMBOL,
    WHITESPACE,
    char_classes,
)

# A scanner appends the lengths of the pieces of text[lo:hi] to `out`.
Scanner = Callable[[str, list[int], int, int, list[int]], None]

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT4O_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS + "?"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS + "?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BLOOM_PATTERN = " ?[^(\\s|.,!?…。，、।۔،)]+"


def _scan_gpt2(text: str, classes: list[int], lo: int, hi: int, out: list[int]) -> None:
    def cls(p: int) -> int:
        return classes[p] if p < hi else 0

    pos = last = lo
    while pos < hi:
        char = text[pos]
        if char == "'" and pos + 1 < hi:
            if text[pos + 1] in "stmd":
                pos += 2
                out.append(pos - last)
                last = pos
                continue
            if pos + 2 < hi and text[pos + 1 : pos + 3] in ("re", "ve", "ll"):
                pos += 3
                out.append(pos - last)
                last = pos
                continue
        lead = cls(pos + 1) if char == " " else classes[pos]
        if lead & (LETTER | NUMBER):
            kind = lead & (LETTER | NUMBER)
            pos += char == " "
            while cls(pos) & kind:
                pos += 1
        elif lead and not lead & (WHITESPACE | LETTER | NUMBER):
            pos += char == " "
            while (c := cls(pos)) and not c & (WHITESPACE | LETTER | NUMBER):
                pos += 1
        else:
            run = 0
            while cls(pos + run) & WHITESPACE:
                run += 1
            if run > 1 and pos + run < hi:
                pos += run - 1  # \s+(?!\S): leave the last space to the next word
            elif run > 0:
                pos += run
            else:
                pos += 1
        if pos > last:
            out.append(pos - last)
        last = pos


def _make_llama3_style_scanner(max_digits: int) -> Scanner:
    def scan(text: str, classes: list[int], lo: int, hi: int, out: list[int]) -> None:
        def cls(p: int) -> int:
            return classes[p] if p < hi else 0

        pos = last = lo
        while pos < hi:
            char = text[pos]
            here = classes[pos]
            if char == "'" and pos + 1 < hi:
                if text[pos + 1] in "sStTmMdD":
                    pos += 2
                    out.append(pos - last)
                    last = pos
                    continue
                if pos + 2 < hi and text[pos + 1 : pos + 3].lower() in ("re", "ve", "ll"):
                    pos += 3
                    out.append(pos - last)
                    last = pos
                    continue
            if (
                char not in "\r\n"
                and not here & NUMBER
                and (here & LETTER or cls(pos + 1) & LETTER)
            ):
                # [^\r\n\p{L}\p{N}]?\p{L}+
                pos += 1
                while cls(pos) & LETTER:
                    pos += 1
            elif here & NUMBER:
                start = pos
                while cls(pos) & NUMBER:
                    pos += 1
                    if pos - start >= max_digits:
                        out.append(pos - last)
                        last = start = pos
            elif not (cls(pos + 1) if char == " " else here) & (WHITESPACE | LETTER | NUMBER):
                # " ?[^\s\p{L}\p{N}]+[\r\n]*" (a lone trailing space also lands here, harmlessly)
                pos += char == " "
                while (c := cls(pos)) and not c & (WHITESPACE | LETTER | NUMBER):
                    pos += 1
                while pos < hi and text[pos] in "\r\n":
                    pos += 1
            else:
                run = 0
                end_of_newlines = 0
                while cls(pos + run) & WHITESPACE:
                    if text[pos + run] in "\r\n":
                        end_of_newlines = pos + run + 1
                    run += 1
                if end_of_newlines:
                    pos = end_of_newlines  # \s*[\r\n]+
                elif run > 1 and pos + run < hi:
                    pos += run - 1
                elif run > 0:
                    pos += run
                else:
                    pos += 1
            if pos > last:
                out.append(pos - last)
            last = pos

    return scan


_SCANNERS: dict[str, Scanner] = {
    GPT2_PATTERN: _scan_gpt2,
    LLAMA3_PATTERN: _make_llama3_style_scanner(3),
    QWEN2_PATTERN: _make_llama3_style_scanner(1),
}

# What `\p{..}` becomes in a collapsed pattern: the class stand-in plus the ASCII members.
_COLLAPSED_CLASS_CHAR = {
    NUMBER: "\xd1",
    LETTER: "\xd2",
    PUNCTUATION: "\xd3",
    MARK: "\xd4",
    SYMBOL: "\xd5",
}
_PROPERTY_CLASSES = {
    "N": (NUMBER, "0-9"),
    "L": (LETTER, "A-Za-z"),
    "Lu": (LETTER, "A-Za-z"),
    "Ll": (LETTER, "A-Za-z"),
    "Lt": (LETTER, "A-Za-z"),
    "Lm": (LETTER, "A-Za-z"),
    "Lo": (LETTER, "A-Za-z"),
    "P": (PUNCTUATION, r"!-#%-*,-/:;?@\[-\]_{}"),
    "M": (MARK, ""),
    "S": (SYMBOL, r"$+<->^`|~"),
}
_PROPERTY = re.compile(r"\\p\{(\w+)\}")
_CATEGORY_MASK = 0xFF


def _collapse_pattern(pattern: str) -> str:
    if any(ord(c) >= 128 for c in pattern):
        raise TokenizerError("pre-tokenizer pattern mixes \\p{..} classes and non-ASCII text")
    out: list[str] = []
    inside = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        escaped = i > 0 and pattern[i - 1] == "\\"
        if char == "[" and not escaped:
            inside = True
        elif char == "]" and inside and not escaped:
            inside = False
        elif (
            char == "\\" and (m := _PROPERTY.match(pattern, i)) and m.group(1) in _PROPERTY_CLASSES
        ):
            bit, ascii_members = _PROPERTY_CLASSES[m.group(1)]
            members = _COLLAPSED_CLASS_CHAR[bit] + ascii_members
            out.append(members if inside else f"[{members}]")
            i = m.end()
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _collapse_text(text: str, classes: list[int]) -> str:
    chars = list(text)
    for i, char in enumerate(chars):
        if ord(char) < 128:
            continue
        bits = classes[i]
        if bits & WHITESPACE:
            chars[i] = "\x0b"  # C's \s only knows ASCII white space
        else:
            chars[i] = _COLLAPSED_CLASS_CHAR.get(bits & _CATEGORY_MASK, "\xd0")
    return "".join(chars)


def _widen_text(text: str, classes: list[int]) -> str:
    chars = list(text)
    for i, char in enumerate(chars):
        if ord(char) >= 128 and classes[i] & WHITESPACE:
            chars[i] = "\x0b"
    return "".join(chars)


@dataclass(frozen=True)
class _RegexRule:
    pattern: re.Pattern[str]
    collapsed: bool


_Rule = Scanner | _RegexRule


def _compile_rule(pattern: str) -> _Rule:
    if pattern in _SCANNERS:
        return _SCANNERS[pattern]
    collapsed = _PROPERTY.search(pattern) is not None
    source = _collapse_pattern(pattern) if collapsed else pattern
    try:
        return _RegexRule(re.compile(source, re.ASCII), collapsed)
    except re.error as exc:
        raise TokenizerError(
            f"pre-tokenizer pattern {pattern!r} does not compile ({exc})"
        ) from None


class PreTokenizer:
    """Splits text into the words that BPE merges within."""

    def __init__(self, patterns: list[str]) -> None:
        self._rules = [_compile_rule(p) for p in patterns]
        self._needs_collapsed = any(isinstance(r, _RegexRule) and r.collapsed for r in self._rules)
        self._needs_wide = any(isinstance(r, _RegexRule) and not r.collapsed for r in self._rules)

    def split(self, text: str) -> list[str]:
        if not text:
            return []
        classes = char_classes(text)
        collapsed = _collapse_text(text, classes) if self._needs_collapsed else ""
        wide = _widen_text(text, classes) if self._needs_wide else ""
        lengths = [len(text)]
        for rule in self._rules:
            new_lengths: list[int] = []
            start = 0
            for length in lengths:
                end = start + length
                if isinstance(rule, _RegexRule):
                    subject = collapsed if rule.collapsed else wide
                    _split_by_regex(rule.pattern, subject, start, end, new_lengths)
                else:
                    rule(text, classes, start, end, new_lengths)
                start = end
            lengths = new_lengths
        words = []
        start = 0
        for length in lengths:
            words.append(text[start : start + length])
            start += length
        return words


def _split_by_regex(
    pattern: re.Pattern[str], subject: str, lo: int, hi: int, out: list[int]
) -> None:
    # Matches and the gaps between them are both pieces; empty matches add nothing.
    piece = subject[lo:hi]
    done = 0
    for match in pattern.finditer(piece):
        begin, end = match.span()
        if begin > done:
            out.append(begin - done)
        if end > begin:
            out.append(end - begin)
        done = end
    if done < len(piece):
        out.append(len(piece) - done)


@dataclass(frozen=True)
class PreTokenizerPreset:
    patterns: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token skips merging
    add_bos: bool = False  # llama.cpp's default when the GGUF does not say
    has_bos: bool = True  # False: the BOS id defaults to none


_DEFAULT = PreTokenizerPreset(
    (r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]")
)
_GPT2 = PreTokenizerPreset((GPT2_PATTERN,))
_LLAMA3 = PreTokenizerPreset((LLAMA3_PATTERN,), ignore_merges=True, add_bos=True)
_QWEN2 = PreTokenizerPreset((QWEN2_PATTERN,))
_STARCODER = PreTokenizerPreset((r"\p{N}", GPT2_PATTERN))
_BLOOM = PreTokenizerPreset((BLOOM_PATTERN,))
_GPT4O = PreTokenizerPreset((GPT4O_PATTERN,))


def _names(names: str, preset: PreTokenizerPreset) -> dict[str, PreTokenizerPreset]:
    return dict.fromkeys(names.split(), preset)


PRESETS: dict[str, PreTokenizerPreset] = {
    "default": _DEFAULT,
    **_names(
        "gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert "
        "jina-v1-en jina-v2-code roberta-bpe mpt olmo jais trillion granite-docling exaone4",
        _GPT2,
    ),
    **_names(
        "llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano", _LLAMA3
    ),
    **_names("dbrx smaug-bpe", PreTokenizerPreset((LLAMA3_PATTERN,))),
    "chatglm-bpe": PreTokenizerPreset((LLAMA3_PATTERN,), has_bos=False),
    **_names("glm4 glm5", PreTokenizerPreset((LLAMA3_PATTERN,), ignore_merges=True, has_bos=False)),
    **_names("qwen2 deepseek-r1-qwen kormo f2llmv2 stablelm2 megrez hunyuan solar-open", _QWEN2),
    **_names("starcoder refact command-r smollm codeshell exaone minerva-7b mellum2", _STARCODER),
    "falcon": PreTokenizerPreset((r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, r"[0-9][0-9][0-9]")),
    **_names("poro-chat bloom gpt3-finnish", _BLOOM),
    "viking": PreTokenizerPreset((BLOOM_PATTERN, r"\p{N}")),
    "deepseek-coder": PreTokenizerPreset(
        ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}")
    ),
    "tekken": PreTokenizerPreset((TEKKEN_PATTERN,), ignore_merges=True, add_bos=True),
    **_names("gpt-4o llama4 kanana2 talkie minimax-m2", _GPT4O),
}


def preset_for(pre: str) -> PreTokenizerPreset:
    """The preset for a `tokenizer.ggml.pre` value ("" means llama.cpp's default)."""
    preset = PRESETS.get(pre or "default")
    if preset is None:
        raise TokenizerError(f"unsupported BPE pre-tokenizer type {pre!r} (tokenizer.ggml.pre)")
    return preset
