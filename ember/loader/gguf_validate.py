"""Check that a file is a well-formed GGUF Ember can read, without loading any tensor data."""

from __future__ import annotations

from pathlib import Path

from ember.loader.gguf_header import GGUFHeader, map_gguf_file, parse_gguf_header


def validate_gguf_header(path: Path) -> GGUFHeader:
    """Parse and bounds-check the whole header of `path`; raise ModelFileError if it is bad.

    Returns the parsed header so callers that want it need not parse twice.
    """
    path = Path(path)
    return parse_gguf_header(map_gguf_file(path), path.name)
