"""Probes and metrics; no key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import RETRY_AFTER_S

router = APIRouter(tags=["health"])

_READY = {"status": "ready", "checks": {"database": "ok", "storage": "ok", "model": "ok"}}
_NOT_READY = {"error": "Not ready: the model is still loading; retry after the Retry-After seconds.",
              "checks": {"database": "ok", "storage": "ok", "model": "The model is still loading; retry after the Retry-After seconds."}}
_READINESS_DOC = {200: {"description": "Database reachable, storage writable, model loaded.",
                        "content": {"application/json": {"example": _READY}}},
                  503: {"description": "Not ready, with the reason of each failing check.",
                        "content": {"application/json": {"example": _NOT_READY}}}}


@router.get("/livez", responses={200: {"content": {"application/json": {"example": {"status": "alive"}}}}})
def livez() -> dict:
    """The process is up (it may still be loading the model)."""
    return {"status": "alive"}


def _readiness(request: Request) -> JSONResponse:
    checks = request.app.state.resources.checks()
    failing = {name: reason for name, reason in checks.items() if reason}
    shown = {name: reason or "ok" for name, reason in checks.items()}
    if not failing:
        return JSONResponse({"status": "ready", "checks": shown})
    first = next(iter(failing.items()))
    return JSONResponse({"error": f"Not ready: {first[0]}: {first[1]}", "checks": shown}, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_S)})


@router.get("/readyz", responses=_READINESS_DOC)
def readyz(request: Request) -> JSONResponse:
    """Database reachable, storage writable, model loaded: 200, else 503 with each reason."""
    return _readiness(request)


@router.get("/healthcheck", responses=_READINESS_DOC)
def healthcheck(request: Request) -> JSONResponse:
    """The same as /readyz, at the path the previous service used."""
    return _readiness(request)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"example": 'raiox_requests_total{route="/v1/match",status="200"} 3.0'}}}})
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
