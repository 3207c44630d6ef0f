"""Log lines of a long-running process (`raiox api`): plain text, or one JSON object per line
(RAIOX_LOG_FORMAT=json) for a log collector, each with the id of the request it belongs to."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone

from .process import mask_credentials

# Set by the API for the duration of a request (and the background work it starts).
request_id: ContextVar[str | None] = ContextVar("raiox_request_id", default=None)
FORMATS = ("text", "json")
OWN_LOGGERS = ("raiox_core", "raiox_api", "raiox_dashboard")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": mask_credentials(record.getMessage())}
        if (rid := request_id.get()) is not None:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextLines(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = mask_credentials(super().format(record))
        rid = request_id.get()
        return f"{line} [request {rid}]" if rid else line


def configure_logging(format: str = "text", level: int = logging.INFO) -> None:
    """Raiox's own loggers at `level` and everyone's warnings, to stderr in `format`; replaces the
    errors-only set-up of the short commands."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if format == "json" else TextLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
