"""Keys of the HTTP API: created with a scope, shown once, stored only as a SHA-256, revoked by name."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg

from .db import Database
from .errors import InvalidInput, NotFound

MATCH, STAFF, WEBHOOK = "match", "staff", "webhook"
SCOPES = (MATCH, STAFF, WEBHOOK)
# What each scope may do: staff also matches and reads; a webhook key only authenticates a webhook URL.
GRANTS = {MATCH: {MATCH}, STAFF: {MATCH, STAFF}, WEBHOOK: {WEBHOOK}}
PREFIX = "rx_"  # recognisable in a config file or a leaked log, so it can be found and revoked
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ApiKey:
    """A stored key, as listed: never the key itself."""

    id: int
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None = None

    def allows(self, needed: str) -> bool:
        return needed in GRANTS[self.scope]

    def to_json(self) -> dict:
        """The shape of `raiox keys list --json`."""
        return {"name": self.name, "scope": self.scope, "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}

    @classmethod
    def from_row(cls, row: dict) -> ApiKey:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def create_key(db: Database, name: str, scope: str) -> tuple[ApiKey, str]:
    """A new random key for `name`: (its stored record, the key). The key is not stored and cannot be shown again."""
    if not _NAME.fullmatch(name or ""):
        raise InvalidInput(f"A key name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
                           f"digit, not {name[:80]!r}.")
    if scope not in SCOPES:
        raise InvalidInput(f"A key's scope is match, staff or webhook, not {scope[:40]!r}.")
    key = PREFIX + secrets.token_urlsafe(32)  # 256 random bits
    try:
        (row,) = db.query("insert-api-key", {"name": name, "scope": scope, "key_sha256": _digest(key)})
    except psycopg.errors.UniqueViolation:
        raise InvalidInput(f"A key named {name!r} exists; revoke it first (`raiox keys revoke {name}`) or "
                           "choose another name.") from None
    return ApiKey.from_row(row), key


def list_keys(db: Database) -> list[ApiKey]:
    """Every key ever created, revoked ones included (with when), by name."""
    return [ApiKey.from_row(row) for row in db.query("list-api-keys")]


def revoke_key(db: Database, name: str) -> None:
    """Revoke the active key of that name: requests with it are refused from now on."""
    if not db.query("revoke-api-key", {"name": name}):
        raise NotFound(f"There is no active key named {name[:80]!r}.")


def authenticate(db: Database, key: str | None) -> ApiKey | None:
    """The active key a client sent, or None for no key, a wrong one or a revoked one."""
    if not key or not key.startswith(PREFIX) or len(key) > 100:
        return None
    rows = db.query("find-api-key", {"key_sha256": _digest(key)})
    return ApiKey.from_row(rows[0]) if rows else None
