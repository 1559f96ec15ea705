"""The chat page: GET / and its two static files, served in front of the API-key check.

The page itself holds no secret (the key is typed into it and sent only on API calls), so a
browser must be able to load it before it knows the key. That is why this is a small ASGI
middleware that answers exactly these paths and hands everything else on unchanged: it sits
outside ApiKeyAuth and never shadows an API route (only "/" and the listed /static/ files).

The files ship as package data (ember/server/static/) and are read once, at the first request.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        # data: only for the empty favicon the page declares (no /favicon.ico round trip).
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/static/chat.css": ("chat.css", "text/css; charset=utf-8"),
}

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files change with the package, not while it runs; no-cache still revalidates.
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    return resources.files("ember.server").joinpath("static", name).read_bytes()


class ChatPage:
    """Answers GET/HEAD for the page's own paths; any other request goes to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        page = PAGE_FILES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if page is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        name, media_type = page
        response = Response(_read(name), media_type=media_type, headers=_HEADERS)
        await response(scope, receive, send)
