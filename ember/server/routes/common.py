"""What every route does the same way: read and validate the body, run a generation as a stream
or to its end, notice a client that went away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from ember.server.encoding import JSONResponse
from ember.server.errors import bad_request
from ember.server.generation import Collected, Generation, collect
from ember.server.sse import EventStreamResponse
from ember.server.state import ServerState

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

CLIENT_CLOSED = 499
"""Nginx's status for "the client closed the connection"; nobody reads it, the log does."""

_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "nullable"}


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.ember
    return state


async def read_json(request: Request, model: type[M]) -> M:
    """The body parsed as `model`; a one-line 400 for anything else (the body-size limit is
    enforced by middleware while it is read)."""
    body = await request.body()
    if not body.strip():
        raise bad_request("the request body is empty: send a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise bad_request(message, param) from None


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """One line naming the field and what is wrong with it, and the field's dotted path."""
    errors = exc.errors(include_url=False)
    if not errors:
        return "the request body is not valid", None
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"the request body is not valid JSON: {first['msg']}", None
    location = _location(first["loc"])
    if not location:
        return f"the request body must be a JSON object ({first['msg']})", None
    # A union (str | list[str] | ...) reports one error per member at the same place.
    messages = list(dict.fromkeys(e["msg"] for e in errors if _location(e["loc"]) == location))[:3]
    got = _short(first.get("input"))
    return f"{location}: {'; or '.join(messages)} (got {got})", location


def _location(loc: tuple[Any, ...]) -> str:
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
        elif isinstance(part, str) and not _is_type_tag(part):
            parts.append(part)
    return ".".join(parts)


def _is_type_tag(part: str) -> bool:
    # pydantic names union members and wrappers in `loc`: "str", "list[int]", "ContentPart",
    # "function-after[...]"; request fields are lower-case identifiers.
    return part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (ClientGone then)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not watcher.done():
            watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task in done:
        return task.result()
    raise ClientGone


class ClientGone(Exception):
    """The client closed its connection before the response was ready."""


async def _disconnected(request: Request) -> None:
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def respond(
    request: Request,
    generation: Generation,
    *,
    stream: bool,
    n: int,
    stream_body: Callable[[], Any],
    render: Callable[[Collected], dict[str, Any]],
) -> Response:
    """Start the generation (errors become statuses), then stream it or collect and render it.

    The engine requests are aborted whenever the response does not run to its end: the client
    left, the handler was cancelled, or rendering failed.
    """
    handed_over = False
    try:
        await until_disconnected(request, generation.start())
        if stream:
            response = EventStreamResponse(stream_body())
            handed_over = True  # the stream closes the generation when it ends
            return response
        collected = await until_disconnected(request, collect(generation, n))
        return JSONResponse(render(collected))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    finally:
        if not handed_over:
            await generation.close()
