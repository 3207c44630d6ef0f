"""The FastAPI application: resources loaded at start-up, key-protected /v1 routes, JSON errors, metrics."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from raiox_core.config import Settings

from . import errors
from .body_limit import BodyLimit
from .metrics import Metrics, MetricsMiddleware
from .rate_limit import RateLimiter
from .request_log import RequestLog
from .resources import Resources
from .intake import Intake
from .routes import health, matching, references, webhooks

DESCRIPTION = """Identify a dental implant on an X-ray by similarity to labelled references: the same answers,
in the same JSON shapes, as `raiox ... --json` and the dashboard.

Every `/v1` endpoint needs a key in the `X-API-Key` header (`raiox keys create NAME --scope match|staff`).
Errors are `{"error": "<one sentence>"}`."""


def create_app(settings: Settings) -> FastAPI:
    """The API over the configured database, storage and model; the model loads once, in the background,
    as the server starts (/readyz says when it is in)."""
    resources = Resources(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        resources.start()
        yield
        app.state.intake.close()
        resources.close()

    # Swagger UI and ReDoc from files installed with the API: FastAPI's own /docs loads them from a CDN.
    app = FastAPIOffline(title="Raiox", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.resources = resources
    app.state.rate_limiter = RateLimiter(settings.api_rate_per_min)
    app.state.metrics = Metrics(resources)
    app.state.intake = Intake(resources)
    resources.on_batch = app.state.metrics.batch_size.observe
    errors.install(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestLog)  # outermost: the request id covers the metrics' and every handler's logging
    for module in (health, matching, references, webhooks):
        app.include_router(module.router)
    return app
