"""Per-codepoint character classes as llama.cpp's pre-tokenizers see them.

llama.cpp classifies codepoints with tables built from Unicode 15.1; Python 3.11's
`unicodedata` is Unicode 14.0, so the codepoints assigned in 15.0 and 15.1 are patched in
below (unassigned codepoints are "undefined", a class of their own). White space is the
Unicode White_Space property, which is what llama.cpp's `\\s` means.

Also here: the GPT-2 byte <-> printable-character map used by byte-level BPE vocabularies.
"""

from __future__ import annotations

import bisect
import unicodedata

# Class bits (a codepoint has exactly one category bit, plus WHITESPACE when it is white space).
UNDEFINED = 0x01
NUMBER = 0x02
LETTER = 0x04
SEPARATOR = 0x08
MARK = 0x10
PUNCTUATION = 0x20
SYMBOL = 0x40
CONTROL = 0x80
WHITESPACE = 0x100

_CATEGORY_BITS = {
    "N": NUMBER,
    "L": LETTER,
    "Z": SEPARATOR,
    "M": MARK,
    "P": PUNCTUATION,
    "S": SYMBOL,
    "C": CONTROL,
}

# Unicode White_Space property.
_WHITE_SPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680]
    + list(range(0x2000, 0x200B))
    + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)

# (first, last, major category) for codepoints assigned in Unicode 15.0 and 15.1.
_ASSIGNED_AFTER_UNICODE_14 = (
    (0x00CF3, 0x00CF3, "M"),
    (0x00ECE, 0x00ECE, "M"),
    (0x02FFC, 0x02FFF, "S"),
    (0x031EF, 0x031EF, "S"),
    (0x10EFD, 0x10EFF, "M"),
    (0x1123F, 0x11240, "L"),
    (0x11241, 0x11241, "M"),
    (0x11B00, 0x11B09, "P"),
    (0x11F00, 0x11F01, "M"),
    (0x11F02, 0x11F02, "L"),
    (0x11F03, 0x11F03, "M"),
    (0x11F04, 0x11F10, "L"),
    (0x11F12, 0x11F33, "L"),
    (0x11F34, 0x11F3A, "M"),
    (0x11F3E, 0x11F42, "M"),
    (0x11F43, 0x11F4F, "P"),
    (0x11F50, 0x11F59, "N"),
    (0x1342F, 0x1342F, "L"),
    (0x13439, 0x1343F, "C"),
    (0x13440, 0x13440, "M"),
    (0x13441, 0x13446, "L"),
    (0x13447, 0x13455, "M"),
    (0x1B132, 0x1B132, "L"),
    (0x1B155, 0x1B155, "L"),
    (0x1D2C0, 0x1D2D3, "N"),
    (0x1DF25, 0x1DF2A, "L"),
    (0x1E030, 0x1E06D, "L"),
    (0x1E08F, 0x1E08F, "M"),
    (0x1E4D0, 0x1E4EB, "L"),
    (0x1E4EC, 0x1E4EF, "M"),
    (0x1E4F0, 0x1E4F9, "N"),
    (0x1F6DC, 0x1F6DC, "S"),
    (0x1F774, 0x1F776, "S"),
    (0x1F77B, 0x1F77F, "S"),
    (0x1F7D9, 0x1F7D9, "S"),
    (0x1FA75, 0x1FA77, "S"),
    (0x1FA87, 0x1FA88, "S"),
    (0x1FAAD, 0x1FAAF, "S"),
    (0x1FABB, 0x1FABD, "S"),
    (0x1FABF, 0x1FABF, "S"),
    (0x1FACE, 0x1FACF, "S"),
    (0x1FADA, 0x1FADB, "S"),
    (0x1FAE8, 0x1FAE8, "S"),
    (0x1FAF7, 0x1FAF8, "S"),
    (0x2B739, 0x2B739, "L"),
    (0x2EBF0, 0x2EE5D, "L"),
    (0x31350, 0x323AF, "L"),
)
_NEW_STARTS = [first for first, _, _ in _ASSIGNED_AFTER_UNICODE_14]


def _classify(char: str) -> int:
    codepoint = ord(char)
    category = unicodedata.category(char)
    if category == "Cn":
        index = bisect.bisect_right(_NEW_STARTS, codepoint) - 1
        bits = UNDEFINED
        if index >= 0:
            first, last, major = _ASSIGNED_AFTER_UNICODE_14[index]
            if first <= codepoint <= last:
                bits = _CATEGORY_BITS[major]
    else:
        bits = _CATEGORY_BITS[category[0]]
    if codepoint in _WHITE_SPACE:
        bits |= WHITESPACE
    return bits


_class_cache: dict[str, int] = {chr(c): _classify(chr(c)) for c in range(128)}


def char_class(char: str) -> int:
    bits = _class_cache.get(char)
    if bits is None:
        bits = _classify(char)
        _class_cache[char] = bits
    return bits


def char_classes(text: str) -> list[int]:
    cache = _class_cache
    out = [0] * len(text)
    for i, char in enumerate(text):
        bits = cache.get(char)
        if bits is None:
            bits = char_class(char)
        out[i] = bits
    return out


def _build_byte_map() -> list[str]:
    # Printable Latin-1 bytes stand for themselves; the other 68 map to U+0100 onwards in order.
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = [""] * 256
    for byte in printable:
        table[byte] = chr(byte)
    extra = 0
    for byte in range(256):
        if not table[byte]:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR: list[str] = _build_byte_map()
CHAR_TO_BYTE: dict[str, int] = {char: byte for byte, char in enumerate(BYTE_TO_CHAR)}
# str.translate table from a Latin-1 character (its ordinal is the byte) to the byte's character.
BYTES_ENCODE_TABLE = {byte: BYTE_TO_CHAR[byte] for byte in range(256)}


def byte_encode(text: str) -> str:
    """GPT-2 byte-level form of `text`: each UTF-8 byte as one printable character."""
    return text.encode("utf-8").decode("latin-1").translate(BYTES_ENCODE_TABLE)
