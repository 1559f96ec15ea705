"""Server-sent events: `data: <json>\\n\\n` frames and a response that always closes its source.

Closing the source matters: the source is an async generator over engine requests, and closing
it aborts them. Starlette cancels the streaming task when the client disconnects; the finally
below makes sure the generator is closed then too, not whenever it is garbage collected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ember.server.encoding import dumps, encode

DONE = b"data: [DONE]\n\n"

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: Any) -> bytes:
    return encode(f"data: {dumps(payload)}\n\n")


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, source: AsyncIterator[bytes], headers: dict[str, str] | None = None):
        super().__init__(source, headers={**STREAM_HEADERS, **(headers or {})})
        self._source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                await aclose()
