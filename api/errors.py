"""Every error as JSON {"error": "<one sentence>"} with its status; never a traceback or a secret."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from raiox_core.errors import (
    DatabaseUnavailable, ImageRejected, InvalidInput, ModelLoadError, NamingError, NotFound, Overloaded, RaioxError,
    StorageError,
)

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5  # for a database, storage or model not ready yet: a client's sensible next try
OVERLOADED_RETRY_AFTER_S = 1  # a full match queue is drained in seconds: retry soon, not in RETRY_AFTER_S


class ApiError(Exception):
    """An error answered as is: status, one sentence, optional headers (Retry-After, Connection)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def not_ready(message: str) -> ApiError:
    return ApiError(503, message, {"Retry-After": str(RETRY_AFTER_S)})


# The core's exception types and the status each means; the first that matches wins.
_STATUS: list[tuple[type[RaioxError], int]] = [
    (NotFound, 404), (ImageRejected, 415), (NamingError, 422), (InvalidInput, 422),
    (DatabaseUnavailable, 503), (StorageError, 503), (ModelLoadError, 503), (Overloaded, 503),
]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


def _validation_sentence(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one sentence about the first: 'k: Input should be ... .'"""
    first = exc.errors()[0] if exc.errors() else {}
    where = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body", "header")]
    field = ".".join(where) or "the request"
    return _sentence(f"Invalid {field}: {first.get('msg', 'not a valid value')}")


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the JSON error shape."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RaioxError)
    async def core_error(_: Request, exc: RaioxError):
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)
        wait = OVERLOADED_RETRY_AFTER_S if isinstance(exc, Overloaded) else RETRY_AFTER_S
        headers = {"Retry-After": str(wait)} if status == 503 else None
        return error_response(status, _sentence(str(exc)), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        return error_response(422, _validation_sentence(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        message = {404: "There is no such endpoint; see /docs.", 405: "This endpoint does not take that method; see /docs."}
        return error_response(exc.status_code, message.get(exc.status_code, _sentence(str(exc.detail))), exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # The server's log has it (the type and message, and the traceback where the log format keeps one), the client not.
        # The route's template, not the path: a webhook's path holds its key.
        route = getattr(request.scope.get("route"), "path", "an unknown path")
        log.error("Unexpected error on %s %s: %s: %s", request.method, route, type(exc).__name__, exc, exc_info=exc)
        return error_response(500, "An internal error occurred; the server's log has the details.")


def documented(*statuses: int, **examples: str) -> dict[int, dict]:
    """OpenAPI `responses` for the error statuses an endpoint can answer, each with an example body."""
    default = {
        400: "The request is not multipart/form-data; send the files as form fields.",
        401: "Send a valid API key in the X-API-Key header.",
        403: "This key's scope is match; this endpoint needs staff.",
        404: "There is no reference with id 12345.",
        413: "scan.png is larger than the limit of 20 MB per file.",
        415: "notes.jpg: The file is a text file, not an image.",
        422: "Invalid k: Input should be less than or equal to 50.",
        429: "More than 120 requests in a minute with this key; retry after the Retry-After seconds.",
        503: "The model is still loading; retry after the Retry-After seconds.",
    }
    return {status: {"description": examples.get(f"e{status}", default[status]),
                     "content": {"application/json": {"example": {"error": examples.get(f"e{status}", default[status])}}}}
            for status in statuses}
