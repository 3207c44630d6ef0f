"""The embedded PostgreSQL 16 + pgvector (pgserver) that runs when no RAIOX_DATABASE_URL is set.

pgserver counts its users in pgdata/.handle_pids.json and stops the server when the last one exits
normally. A killed process never removes its pid, so this module prunes dead pids when a process joins
(adopting a server left behind), and starts a watchdog (pg_watchdog) that stops the server once no pid
in that file is alive: nothing Raiox starts outlives the last Raiox process by more than a few seconds.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psycopg

from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)
HANDLES = ".handle_pids.json"  # pgserver's list of the pids using the server
WATCHDOG_LOCK = ".raiox-watchdog.lock"  # held by the one watchdog of a server
_watchdog = None  # the Popen of the watchdog this process started: kept, so that it is never collected
SHARED_BUFFERS_SHARE = 0.25  # PostgreSQL's usual advice for a dedicated server: a quarter of the RAM
SHARED_BUFFERS_MAX_MB = 4096
EXIT_WAIT_S = 10.0  # how long stop() waits for a postmaster that has removed its PID file to exit too


def shared_buffers_mb() -> int:
    """What the embedded server should cache: a quarter of RAM, between PostgreSQL's 128 MB and 4 GB.

    The default 128 MB holds the HNSW graph of only ~50k 512-d vectors; beyond that every search
    copies most index pages from the OS cache (measured at 100k: p50 at ef_search 100 is 8.0 ms with
    128 MB, 5.0 ms with 4 GB). Shared memory is touched only as pages are read, so a large setting costs nothing up front.
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
        # Not `pg_ctl restart`: the new postmaster would be unknown to the handle, which would then neither
        # stop it at exit nor know its log file. pgserver's own start records it, under pgserver's lock.
        with postgres_server_class()._lock:
            stop(server.pgdata)
            server.ensure_postgres_running()
    else:
        log.info("shared_buffers %s MB -> %s MB from the embedded server's next start.", have, want)


def postgres_server_class():
    """pgserver's PostgresServer (pgserver imported here: only the embedded default needs it), imported
    without platformdirs' RuntimeDirWarning.

    pgserver picks its lock directory when imported; without XDG_RUNTIME_DIR (services, containers, cron,
    sudo) platformdirs falls back to a private /tmp/runtime-<uid>, which serves pgserver as well, so the
    warning names nothing a Raiox user could act on yet would head every command's output. Only that
    warning, and only during this import, is silenced.
    """
    import platformdirs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", getattr(platformdirs, "RuntimeDirWarning", UserWarning))
        from pgserver.postgres_server import PostgresServer
    return PostgresServer


def _alive(pid: int) -> bool:
    import psutil

    try:  # a zombie has exited; it only waits for its parent (or a lax init) to reap it
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def live_users(pgdata: Path) -> list[int]:
    """The pids of pgserver's handle file still alive; the dead are removed from it (hold pgserver's lock)."""
    path = Path(pgdata) / HANDLES
    try:
        pids = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError:  # torn by a kill mid-write: nobody can be trusted to be listed
        pids = None
    alive = [pid for pid in pids or [] if _alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))
    return alive


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the running postmaster of pgdata, or None when none runs."""
    try:
        pid = int((Path(pgdata) / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def stop(pgdata: Path) -> None:
    """Stop the server of pgdata now (its clients are disconnected), as the user pgserver runs it as.

    A server that stops meanwhile (its watchdog, or the exit of its last user, got there first) is stopped:
    pg_ctl then fails for want of a PID file, and that is not an error."""
    from pgserver._commands import pg_ctl

    user = "pgserver" if os.name != "nt" and os.geteuid() == 0 else None  # pgserver's rule: never as root
    pid = postmaster_pid(pgdata)
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    except subprocess.CalledProcessError:
        if postmaster_pid(pgdata) is not None:
            raise
    # pg_ctl returns once the PID file is gone, a moment before the postmaster has exited: wait for that,
    # so that a handle of this process looking at it afterwards (pgserver's cleanup) finds it gone.
    deadline = time.monotonic() + EXIT_WAIT_S
    while pid is not None and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def release(server) -> None:
    """This process is done with server (pgserver's cleanup): when it was the last user, the server stops.

    The watchdog may have stopped it already, or stop it while pgserver's cleanup runs; pgserver would then
    log pg_ctl's failure and signal a postmaster that is gone (psutil's NoSuchProcess): stopped, as asked."""
    import psutil

    if postmaster_pid(server.pgdata) is None:  # stopped already: let pgserver forget it, not stop it again
        server._postmaster_info = None
    try:
        server.cleanup()
    except psutil.NoSuchProcess:
        log.debug("The embedded PostgreSQL had stopped already.")


def _ensure_watchdog(pgdata: Path) -> None:
    import fasteners

    global _watchdog
    probe = fasteners.InterProcessLock(pgdata / WATCHDOG_LOCK)
    if not probe.acquire(blocking=False):
        return  # a watchdog holds it: this server is watched already
    probe.release()  # two processes may both get here: the second watchdog finds the lock taken and exits
    detached = ({"creationflags": subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP}
                if os.name == "nt" else {"start_new_session": True})  # a Ctrl-C of the command must not reach it
    _watchdog = subprocess.Popen([sys.executable, "-m", "raiox_core.pg_watchdog", str(pgdata)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True, **detached)


def _release_at_exit(server) -> None:
    """Have this process's exit run release(server) instead of pgserver's own cleanup, once per handle."""
    if getattr(server, "_raiox_release", None) is None:
        server._raiox_release = functools.partial(release, server)  # compared by identity: one per handle
        atexit.unregister(server._cleanup)
        atexit.register(server._raiox_release)


def start(data_dir: Path):
    """Start (or join) the pgserver PostgreSQL under data_dir/pg and return its handle.

    The server stops when the last process using it exits, or a few seconds after it is killed.
    """
    PostgresServer = postgres_server_class()
    pgdata = (Path(data_dir) / "pg").expanduser().resolve()  # pgserver resolves it too: one spelling everywhere
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    fresh = not (pgdata / "PG_VERSION").exists()
    try:
        with PostgresServer._lock:  # the lock pgserver takes to count its users
            live_users(pgdata)  # forget killed users, so that this process's exit stops a server they left
        from pgserver import get_server

        server = get_server(pgdata)  # stops when the last process using it exits
        _release_at_exit(server)
        with PostgresServer._lock:
            # get_server hands back this process's earlier handle as it is: start a server stopped under it.
            server.ensure_postgres_running()
        tune(server, restart=fresh)
    except Exception as exc:  # pgserver raises plain exceptions with initdb/pg_ctl output
        raise DatabaseUnavailable(f"Could not start the embedded PostgreSQL in {pgdata}: {str(exc).splitlines()[0]}") from None
    try:
        _ensure_watchdog(pgdata)  # after tune: a watchdog would take the restart for a stop and leave
    except OSError as exc:  # the database works without it; only a killed last user would leave it running
        log.warning("Could not start the embedded PostgreSQL's watchdog: %s", exc)
    return server
