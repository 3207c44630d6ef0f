"""Stops the embedded PostgreSQL once no process listed as its user is alive (the last one may be killed).

Run as `python -m raiox_core.pg_watchdog PGDATA`, detached, by embedded_pg.start; one per server.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from . import embedded_pg

POLL_S = 1.0  # how soon after the last user dies the server stops: a poll is a file read and a few stat()s


def watch(pgdata: Path, poll_s: float = POLL_S) -> None:
    """Return once the server has stopped: by its last user's exit, or by this watchdog when none is alive."""
    import fasteners

    server_lock = embedded_pg.postgres_server_class()._lock
    # Kept in a name for the whole watch: a lock object that is collected closes its file and lets go.
    mine = fasteners.InterProcessLock(pgdata / embedded_pg.WATCHDOG_LOCK)
    if not mine.acquire(blocking=False):
        return  # another watchdog watches this server
    while True:
        time.sleep(poll_s)
        # Under pgserver's lock, a process joining either is listed already or starts the server afresh.
        with server_lock:
            if embedded_pg.postmaster_pid(pgdata) is None:
                return  # stopped by its last user's exit (or its data directory removed)
            if embedded_pg.live_users(pgdata):
                continue
            try:
                embedded_pg.stop(pgdata)
            except (subprocess.SubprocessError, OSError):
                pass  # stopped meanwhile by other means; nothing is left to watch either way
            return


if __name__ == "__main__":
    watch(Path(sys.argv[1]))
