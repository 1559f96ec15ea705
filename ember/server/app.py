"""create_app(state): the FastAPI application over a ServerState.

Dialects plug in as routers (routes/<dialect>.py); everything they raise as ApiError or
EmberError becomes an OpenAI-shaped error here, and so do FastAPI's own 404/405/422 (a 422 is
reported as 400: OpenAI's clients expect 400 for a bad request).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ember.errors import EmberError
from ember.server.encoding import JSONResponse
from ember.server.error_shapes import dialect_error_body
from ember.server.errors import ApiError, error_body, from_ember_error
from ember.server.middleware import ApiKeyAuth, RequestContext, SizeLimit
from ember.server.routes.page import ChatPage
from ember.server.settings import PUBLIC_PATHS
from ember.server.state import ServerState

log = logging.getLogger("ember.server")


def create_app(state: ServerState) -> FastAPI:
    from ember import __version__
    from ember.server.routes import anthropic, openai, ops, tokenize
    from ember.server.routes.ollama import router as ollama_router

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()  # a no-op for engines `ember serve` started before binding
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="Ember",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ember = state
    for router in (ops.router, openai.router, tokenize.router, anthropic.router, ollama_router):
        app.include_router(router)
    _add_error_handlers(app, state)

    settings = state.settings
    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(
        SizeLimit,
        max_body_bytes=settings.limits.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
    )
    if settings.api_key is not None:
        app.add_middleware(ApiKeyAuth, api_key=settings.api_key, public_paths=PUBLIC_PATHS)
    app.add_middleware(ChatPage)  # outside the key check: the page loads without a key
    if settings.allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["X-Request-Id"],
        )
    app.add_middleware(RequestContext)
    return app


def _add_error_handlers(app: FastAPI, state: ServerState) -> None:
    retry_after = state.settings.retry_after_seconds

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        body = dialect_error_body(request.url.path, exc.status, exc.body())
        return JSONResponse(body, exc.status, headers=exc.headers)

    async def ember_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EmberError)
        error = from_ember_error(exc, retry_after)
        if error.status >= 500:
            log.error("request failed: %s", error.message)
        body = dialect_error_body(request.url.path, error.status, error.body())
        return JSONResponse(body, error.status, headers=error.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        body = dialect_error_body(request.url.path, 400, error_body(message, param=where or None))
        return JSONResponse(body, 400)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = dialect_error_body(request.url.path, exc.status_code, error_body(message, type=kind))
        return JSONResponse(body, exc.status_code, headers=dict(exc.headers or {}))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(EmberError, ember_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
