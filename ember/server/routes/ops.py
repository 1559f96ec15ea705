"""Operations: /health (the engine really serving), /metrics (Prometheus), /version."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.server.encoding import JSONResponse
from ember.server.routes.common import server_state

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    """200 while every engine thread is alive and serving; 503 (with the reason) otherwise,
    including while the server drains for shutdown."""
    state = server_state(request)
    problem = state.health_problem()
    if problem is None:
        return JSONResponse({"status": "ok"})
    headers = {"Retry-After": str(state.settings.retry_after_seconds)}
    return JSONResponse({"status": "unavailable", "reason": problem}, 503, headers=headers)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body, content_type = server_state(request).metrics.render()
    return Response(body, media_type=content_type)


@router.get("/version")
async def version() -> Response:
    from ember import __version__

    return JSONResponse({"version": __version__})
