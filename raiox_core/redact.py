"""URLs made safe to show: no user:password, no secret in a query string, whatever the scheme."""

from __future__ import annotations

import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

HIDDEN = "***"
# Query parameters whose values are credentials: presigned S3 URLs (X-Amz-Signature, X-Amz-Security-Token,
# X-Amz-Credential), Azure SAS (sig), and the usual token/password/secret/key names.
_SECRET_PARAM = re.compile(
    r"([?&;][^=&;#]*(?:signature|sig|token|password|passwd|pwd|secret|credential|key|auth)[^=&;#]*=)[^&;#]*",
    re.IGNORECASE,
)
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*://)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with every credential replaced by ***: safe in messages, descriptions, logs and the sidebar.

    Database URLs and key=value DSNs are rebuilt by libpq's own rules (user, host, port, database only), so a
    password in a DSN, a query string or a malformed URL is never echoed. Other URLs keep their shape: the
    user information is hidden up to the *last* "@", because a password may itself hold "/", "?", "#" or "@"
    and a parser that stops at the first of them would show the rest of it.
    """
    scheme = _SCHEME.match(url)
    if (scheme and scheme.group(1).lower() in ("postgresql://", "postgres://")) or (not scheme and "=" in url.split("?")[0]):
        return _redact_database_url(url)
    if scheme:
        rest = url[scheme.end():]
        if "@" in rest:
            rest = HIDDEN + rest[rest.rindex("@"):]
        url = scheme.group(1) + rest
    return _SECRET_PARAM.sub(rf"\1{HIDDEN}", url)


def _redact_database_url(url: str) -> str:
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unreadable RAIOX_DATABASE_URL"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host') or 'localhost'}{port}/{info.get('dbname', '')}"


_URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)


def redact_urls_in(text: str) -> str:
    """`text` (a log line, an exception's message) with every URL in it passed through redact_url."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)
