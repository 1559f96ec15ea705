"""JSON for responses: compact, UTF-8, and never failing on text a client sent."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response


def dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def encode(text: str) -> bytes:
    # A lone surrogate from a client's JSON ("\\ud800") cannot be UTF-8: it becomes "?".
    return text.encode("utf-8", errors="replace")


class JSONResponse(Response):
    """Compact UTF-8 JSON that never fails on text a client sent (see encode)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode(dumps(content))
