"""A request id for every request (the client's X-Request-ID when it is a sane one), returned in the
response, attached to every log line made while answering, and one log line per request by route template
(never the raw path: a webhook's path holds its key, a query string anything)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from raiox_core.logs import request_id

log = logging.getLogger("raiox_api.requests")
_SANE_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
PROBES = {"/livez", "/readyz", "/healthcheck", "/metrics"}  # polled every few seconds: DEBUG, not INFO


class RequestLog:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = dict(scope["headers"]).get(b"x-request-id", b"")
        rid = sent.decode() if _SANE_ID.fullmatch(sent) else uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            log.log(logging.DEBUG if route in PROBES else logging.INFO, "%s %s %d %.0f ms", scope["method"], route,
                    status[0], (time.perf_counter() - start) * 1000)
            request_id.reset(token)
