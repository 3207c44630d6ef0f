"""`raiox api`: the application under uvicorn."""

from __future__ import annotations

import uvicorn

from raiox_core.config import Settings
from raiox_core.logs import configure_logging

from .app import create_app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted; one process, so the model is loaded once."""
    configure_logging(settings.log_format)
    print(f"Raiox API on http://{host}:{port} (documentation at /docs)", flush=True)
    # uvicorn's own access log would print each request's query string; our metrics count requests instead.
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_level="warning",
                timeout_graceful_shutdown=5)
