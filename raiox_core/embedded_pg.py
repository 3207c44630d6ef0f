"""The embedded PostgreSQL 16 + pgvector (pgserver) that runs when no RAIOX_DATABASE_URL is set."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psycopg

from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)
SHARED_BUFFERS_SHARE = 0.25  # PostgreSQL's usual advice for a dedicated server: a quarter of the RAM
SHARED_BUFFERS_MAX_MB = 4096


def shared_buffers_mb() -> int:
    """What the embedded server should cache: a quarter of RAM, between PostgreSQL's 128 MB and 4 GB.

    The default 128 MB holds the HNSW graph of only ~50k 512-d vectors; beyond that every search
    copies most index pages from the OS cache (measured here at 100k: p50 8.0 -> 5.0 ms at ef_search
    100). Shared memory is touched only as pages are read, so a large setting costs nothing up front.
    """
    try:
        ram_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (ValueError, OSError, AttributeError):
        return 128
    return int(min(SHARED_BUFFERS_MAX_MB, max(128, ram_mb * SHARED_BUFFERS_SHARE)))


def tune(server, *, restart: bool) -> None:
    """Set shared_buffers for the embedded server: it applies from the server's next start, or now when
    `restart` (only safe while nothing else uses the server, i.e. right after creating it)."""
    want = shared_buffers_mb()
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:  # ALTER SYSTEM needs autocommit
        have = conn.execute("SELECT setting::bigint * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'").fetchone()[0]
        if have == want:
            return
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{want}MB'")
    if restart:
        from pgserver.postgres_server import pg_ctl  # pgserver's own wrapper: same user, same socket options

        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=60)
    else:
        log.info("shared_buffers %s MB -> %s MB from the embedded server's next start.", have, want)


def start(data_dir: Path):
    """Start (or join) the pgserver PostgreSQL under data_dir/pg and return its handle."""
    import pgserver  # imported here: only the embedded default needs it

    pgdata = Path(data_dir) / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    fresh = not (pgdata / "PG_VERSION").exists()
    try:
        server = pgserver.get_server(pgdata)  # stops when the last process using it exits
        tune(server, restart=fresh)
    except Exception as exc:  # pgserver raises plain exceptions with initdb/pg_ctl output
        raise DatabaseUnavailable(f"Could not start the embedded PostgreSQL in {pgdata}: {str(exc).splitlines()[0]}") from None
    return server
