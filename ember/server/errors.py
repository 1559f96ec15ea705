"""HTTP errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Routes raise ApiError (or let an EmberError through); app.py turns both into JSON responses.
Every message is one line: a client shows it to a person.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ember.core.request import RejectReason, RequestRejected
from ember.errors import EmberError, RequestError, TokenizerError

INVALID_REQUEST = "invalid_request_error"


class ApiError(Exception):
    """An HTTP error response: status code, a one-line message and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = one_line(message)
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def to_json(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False).encode(errors="replace")


def error_body(
    message: str, type: str = INVALID_REQUEST, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": one_line(message), "type": type, "param": param, "code": code}}


def one_line(message: str) -> str:
    text = " ".join(str(message).split())
    return text[:2000] if text else "error"


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def not_found(message: str, code: str | None = None) -> ApiError:
    return ApiError(404, message, code=code)


def unavailable(message: str, retry_after: int) -> ApiError:
    return ApiError(
        503,
        message,
        type="service_unavailable",
        code="service_unavailable",
        headers={"Retry-After": str(retry_after)},
    )


def queue_full(message: str, retry_after: int) -> ApiError:
    return ApiError(
        429,
        message,
        type="rate_limit_error",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after)},
    )


def from_ember_error(exc: EmberError, retry_after: int) -> ApiError:
    """What status an EmberError raised while serving a request deserves."""
    if isinstance(exc, RequestRejected) and exc.reason is RejectReason.QUEUE_FULL:
        return queue_full(str(exc), retry_after)
    if isinstance(exc, RequestError | TokenizerError):
        return bad_request(str(exc))
    # A model or registry failure while serving is the server's problem, not the client's.
    return ApiError(500, str(exc), type="server_error")
