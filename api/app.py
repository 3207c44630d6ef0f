"""The FastAPI application: resources loaded at start-up, key-protected /v1 routes, JSON errors, metrics."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from raiox_core.config import Settings

from . import errors
from .metrics import Metrics, MetricsMiddleware
from .rate_limit import RateLimiter
from .resources import Resources
from .routes import health, matching, references

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
        resources.close()

    app = FastAPI(title="Raiox", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.resources = resources
    app.state.rate_limiter = RateLimiter(settings.api_rate_per_min)
    app.state.metrics = Metrics(resources)
    resources.on_batch = app.state.metrics.batch_size.observe
    errors.install(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for module in (health, matching, references):
        app.include_router(module.router)
    return app
