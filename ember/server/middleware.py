"""Pure ASGI middleware (no per-request task or body copy, streaming passes straight through).

From the outside in (app.py adds them in this order):
- RequestContext: a request id (the client's X-Request-Id when sane, else a new one) echoed in
  the response headers; one structured access-log line per request; any exception that escaped
  the app becomes a one-line 500 instead of a traceback on the wire.
- (CORS, only when origins are configured)
- ApiKeyAuth: `Authorization: Bearer <key>` (or `x-api-key: <key>`, Anthropic's header) on
  every path but the public ones.
- SizeLimit: headers over their limit are a 431; a body over its limit is a 413, whether
  Content-Length says so or the bytes do. (uvicorn's own header limit only applies to heads
  that arrive in pieces.)
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.server.errors import ApiError

access_log = logging.getLogger("ember.access")
log = logging.getLogger("ember.server")

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def send_error(
    send: Send, error: ApiError, extra_headers: list[tuple[bytes, bytes]], path: str = ""
) -> None:
    # In the dialect of the route asked for (Anthropic and Ollama clients read their own shape).
    from ember.server.error_shapes import dialect_error_body

    body = json.dumps(dialect_error_body(path, error.status, error.body())).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *[(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()],
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, REQUEST_ID_HEADER.encode())
        request_id = given if given and _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (REQUEST_ID_HEADER.encode(), request_id.encode())
        started = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - a bug must not reach the client as a traceback
            log.exception("request %s %s failed", request_id, scope.get("path"))
            if status == 0:
                first = (str(exc).strip().splitlines() or [""])[0]
                error = ApiError(
                    500, f"internal error ({type(exc).__name__}: {first})", type="server_error"
                )
                status = 500
                await send_error(send, error, [id_header], scope.get("path", ""))
        finally:
            _log_access(scope, request_id, status, time.monotonic() - started)


def _log_access(scope: Scope, request_id: str, status: int, seconds: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    record = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": status or 499,  # 0: the client left before any response started
        "duration_ms": round(seconds * 1000, 1),
        "client": f"{client[0]}:{client[1]}" if client else None,
    }
    access_log.info("%s", json.dumps(record, ensure_ascii=False))


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, api_key: str, public_paths: Collection[str]) -> None:
        self.app = app
        self._key = api_key.encode()
        self._public = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") == "OPTIONS"
            or scope.get("path") in self._public
        ):
            await self.app(scope, receive, send)
            return
        given = self._given_key(scope)
        if given is None or not hmac.compare_digest(given.encode(), self._key):
            message = (
                "missing API key: send it as 'Authorization: Bearer <key>'"
                if given is None
                else "incorrect API key"
            )
            error = ApiError(401, message, code="invalid_api_key")
            await send_error(send, error, [(b"www-authenticate", b"Bearer")], scope.get("path", ""))
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _given_key(scope: Scope) -> str | None:
        authorization = _header(scope, b"authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
        return _header(scope, b"x-api-key")


class SizeLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"the request body is larger than this server's limit of {self.max_bytes} bytes",
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))
        if head > self.max_header_bytes:
            error = ApiError(
                431,
                f"the request headers are larger than this server's limit of "
                f"{self.max_header_bytes} bytes",
                code="headers_too_large",
            )
            await send_error(send, error, [(b"connection", b"close")], scope.get("path", ""))
            return
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await send_error(
                send, self._too_large(), [(b"connection", b"close")], scope.get("path", "")
            )
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read; the API error handler answers it.
                    raise self._too_large()
            return message

        await self.app(scope, counted_receive, send)
