"""A cap on request bodies that are not multipart uploads (the JSON of PATCH /v1/references/{id}): FastAPI
reads such a body whole before any check of ours runs, so a 2 GB one would be held in memory."""

from __future__ import annotations

from .errors import ApiError, error_response

MAX_JSON_BYTES = 64 * 1024  # a label correction is a few hundred bytes


def _too_large() -> ApiError:
    return ApiError(413, f"The request body is larger than {MAX_JSON_BYTES // 1024} KB; it should be a few labels.",
                    {"Connection": "close"})


class BodyLimit:
    """Refuses a declared Content-Length over MAX_JSON_BYTES at once, and a streamed body as soon as it passes
    it; multipart bodies are left to api/uploads.py, which applies the upload limits while reading."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if headers.get(b"content-type", b"").lower().startswith(b"multipart/"):
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_JSON_BYTES:
            refusal = _too_large()
            return await error_response(refusal.status, refusal.message, refusal.headers)(scope, receive, send)
        # Read here, up to the cap, and replayed to the application: raised from inside FastAPI's body reading,
        # the refusal would become its generic 400.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            body += message.get("body", b"")
            if len(body) > MAX_JSON_BYTES:
                refusal = _too_large()
                return await error_response(refusal.status, refusal.message, refusal.headers)(scope, receive, send)
            if not message.get("more_body"):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": bytes(body), "more_body": False}], receive),
                       send)


def _replay(messages: list[dict], then=None):
    """An ASGI receive that gives `messages`, then defers to `then` (a disconnect, when it comes)."""
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        return await then() if then else {"type": "http.disconnect"}

    return receive
