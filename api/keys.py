"""X-API-Key on every /v1 endpoint: 401 without a valid key, 403 for the wrong scope, 429 over the rate."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from raiox_core.api_keys import ApiKey, authenticate

from .errors import ApiError
from .rate_limit import RateLimiter

_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="A key from `raiox keys create`.")


def authorise(request: Request, key: str | None, scope: str, sent_in: str = "the X-API-Key header") -> ApiKey:
    """The active key sent (in the header, or a webhook's URL), which must allow `scope` and be within its rate."""
    found = authenticate(request.app.state.resources.db, key)
    if found is None:
        raise ApiError(401, f"Send a valid API key in {sent_in}." if key else
                       f"This endpoint needs an API key in {sent_in} (`raiox keys create`).")
    if not found.allows(scope):
        raise ApiError(403, f"This key's scope is {found.scope}; this endpoint needs {scope}"
                            f"{' or staff' if scope == 'match' else ''}.")
    limiter: RateLimiter = request.app.state.rate_limiter
    wait = limiter.take(found.id)
    if wait:
        raise ApiError(429, f"More than {limiter.per_minute} requests in a minute with this key; retry after "
                            "the Retry-After seconds.", {"Retry-After": limiter.retry_after(wait)})
    return found


def require(scope: str):
    """A dependency: the X-API-Key header's key, authorised for `scope`."""

    def check(request: Request, key: str | None = Depends(_header)) -> ApiKey:
        return authorise(request, key, scope)

    return check
