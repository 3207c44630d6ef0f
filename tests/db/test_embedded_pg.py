"""The embedded server: shared_buffers sized for the HNSW index without disrupting anyone, and a lifetime
that ends with the last Raiox process, even a killed one."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from raiox_core import embedded_pg


def _shared_buffers(conn) -> tuple[int, bool]:
    return conn.execute("SELECT setting::bigint * 8 / 1024, pending_restart FROM pg_settings"
                        " WHERE name = 'shared_buffers'").fetchone()


@pytest.fixture
def data_dir():
    # Not pytest's tmp_path: that is private to root, and pgserver runs postgres as its own user.
    path = Path(tempfile.mkdtemp(prefix="raiox-test-embedded-"))
    yield path
    if embedded_pg.postmaster_pid(path / "pg") is not None:  # a failed test must not leave its server running
        embedded_pg.stop(path / "pg")
    shutil.rmtree(path, ignore_errors=True)


def test_sizing_is_a_quarter_of_ram_within_bounds():
    assert 128 <= embedded_pg.shared_buffers_mb() <= embedded_pg.SHARED_BUFFERS_MAX_MB


def test_a_new_server_starts_with_the_tuned_shared_buffers(data_dir):
    server = embedded_pg.start(data_dir)
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            assert _shared_buffers(conn) == (embedded_pg.shared_buffers_mb(), False)
        # The handle knows the postmaster restarted with the tuning: the exit of its last user stops that one,
        # where a handle still naming the pre-restart postmaster would leave the new one running.
        assert server.get_pid() == embedded_pg.postmaster_pid(data_dir / "pg")
    finally:
        server.cleanup()
    assert embedded_pg.postmaster_pid(data_dir / "pg") is None


def test_a_running_server_is_not_restarted_under_its_users_the_value_waits(data_dir):
    import pgserver

    want = embedded_pg.shared_buffers_mb()
    older = pgserver.get_server(data_dir / "pg")  # as an older Raiox started it: PostgreSQL's 128 MB
    try:
        with psycopg.connect(older.get_uri(), autocommit=True) as conn:
            started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
            assert _shared_buffers(conn)[0] == 128 != want
        joined = embedded_pg.start(data_dir)
        with psycopg.connect(joined.get_uri(), autocommit=True) as conn:
            assert conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started
            assert _shared_buffers(conn)[0] == 128
        assert f"shared_buffers = '{want}MB'" in (data_dir / "pg" / "postgresql.auto.conf").read_text()
    finally:
        older.cleanup()
    restarted = embedded_pg.start(data_dir)  # the next start applies it
    try:
        with psycopg.connect(restarted.get_uri(), autocommit=True) as conn:
            assert _shared_buffers(conn) == (want, False)
    finally:
        restarted.cleanup()


# -- lifecycle: nothing Raiox starts outlives the last Raiox process -------------------------------

def test_stopping_a_server_that_has_just_stopped_is_not_an_error(data_dir):
    """The watchdog and a last user's exit may both stop one server; the second to come finds it stopped."""
    server = embedded_pg.start(data_dir)
    postmaster = embedded_pg.postmaster_pid(data_dir / "pg")
    embedded_pg.stop(data_dir / "pg")
    # Exited, not only without its PID file (pg_ctl's sign): pgserver's cleanup would otherwise signal it
    # while it exits. A zombie has exited; it waits for init to reap it.
    assert not psutil.pid_exists(postmaster) or psutil.Process(postmaster).status() == psutil.STATUS_ZOMBIE
    embedded_pg.stop(data_dir / "pg")  # pg_ctl fails here (no PID file): stopped is what was asked for
    embedded_pg.release(server)


# A Raiox process whose server another process stops: before its exit, or (the watchdog seeing the handle
# file emptied by that exit) while its exit's cleanup runs, just after pgserver has seen a running postmaster.
STOPPED_BEFORE_ITS_EXIT = """import pathlib, sys
from raiox_core import embedded_pg
embedded_pg.start(sys.argv[1])
embedded_pg.stop(pathlib.Path(sys.argv[1]) / 'pg')
"""
STOPPED_DURING_ITS_EXIT = """import pathlib, sys, psutil
from raiox_core import embedded_pg
embedded_pg.start(sys.argv[1])
def stopped_as_pgserver_looks(process):
    embedded_pg.stop(pathlib.Path(sys.argv[1]) / 'pg')
    return True  # what pgserver saw a moment earlier
psutil.Process.is_running = stopped_as_pgserver_looks
"""


def _exit_of(script: str, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, str(data_dir)], capture_output=True, text=True,
                          env=_embedded_env(data_dir), timeout=120)


def test_a_user_whose_server_was_stopped_exits_quietly(data_dir):
    proc = _exit_of(STOPPED_BEFORE_ITS_EXIT, data_dir)
    assert (proc.returncode, proc.stderr) == (0, "")  # not pgserver's log of a pg_ctl stop that failed
    _wait_until_nothing_runs(data_dir / "pg")


def test_a_server_stopped_during_its_last_users_exit_ends_that_exit_without_a_traceback(data_dir):
    proc = _exit_of(STOPPED_DURING_ITS_EXIT, data_dir)
    # pgserver logs pg_ctl's failure; its own atexit cleanup would then raise NoSuchProcess.
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "NoSuchProcess" not in proc.stderr, proc.stderr
    _wait_until_nothing_runs(data_dir / "pg")


GONE_WITHIN_S = 15  # a behaviour bound (the watchdog polls every second), not a speed assertion
HOLD = "import sys, time; from raiox_core import embedded_pg; embedded_pg.start(sys.argv[1]); print('up', flush=True); time.sleep(600)"


def _embedded_env(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAIOX_") and k != "XDG_RUNTIME_DIR"}
    return env | {"RAIOX_DATA_DIR": str(data_dir)}


def _started_by_raiox(pgdata: Path) -> list[psutil.Process]:
    """The postmaster and the watchdog of pgdata, if running (their command lines name it; zombies have exited)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(pgdata) in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _wait_until_nothing_runs(pgdata: Path) -> None:
    deadline = time.monotonic() + GONE_WITHIN_S
    while (left := _started_by_raiox(pgdata)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"still running {GONE_WITHIN_S} s after the last Raiox process: {[p.cmdline() for p in left]}"


@pytest.fixture
def holder(data_dir):
    """A process that opens the embedded database and sleeps, as a long command does; killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(data_dir)], stdout=subprocess.PIPE, text=True,
                            env=_embedded_env(data_dir))
    assert proc.stdout.readline() == "up\n"
    yield proc
    proc.kill()
    proc.wait()


def test_a_command_on_a_fresh_data_dir_prints_only_its_output_and_leaves_nothing_running(data_dir):
    # XDG_RUNTIME_DIR unset, as under cron, systemd services, containers and sudo.
    proc = subprocess.run([sys.executable, "-m", "raiox_core.cli", "stats"], capture_output=True, text=True,
                          env=_embedded_env(data_dir), timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "0 references\n", "")
    _wait_until_nothing_runs(data_dir / "pg")


def test_a_match_skips_the_interpreters_teardown_yet_stops_the_server_before_it_exits(data_dir):
    missing = data_dir / "missing.png"  # refused before any model load: the exit is what is tested
    proc = subprocess.run([sys.executable, "-m", "raiox_core.cli", "match", str(missing), "--json"],
                          capture_output=True, text=True, env=_embedded_env(data_dir), timeout=120)
    assert proc.returncode == 1 and json.loads(proc.stdout)[0]["error"].endswith("."), proc.stderr
    # Stopped by the command's own exit (pgserver's atexit handler), not a second later by the watchdog.
    assert embedded_pg.postmaster_pid(data_dir / "pg") is None
    _wait_until_nothing_runs(data_dir / "pg")


def test_a_killed_last_user_leaves_no_server_behind_and_the_next_command_starts(data_dir, holder):
    postmaster = embedded_pg.postmaster_pid(data_dir / "pg")
    assert postmaster is not None
    holder.kill()  # SIGKILL: no atexit, its pid stays in pgserver's handle file
    holder.wait()
    _wait_until_nothing_runs(data_dir / "pg")
    assert not psutil.pid_exists(postmaster) or psutil.Process(postmaster).status() == psutil.STATUS_ZOMBIE
    proc = subprocess.run([sys.executable, "-m", "raiox_core.cli", "stats"], capture_output=True, text=True,
                          env=_embedded_env(data_dir), timeout=120)
    assert (proc.returncode, proc.stdout) == (0, "0 references\n"), proc.stderr
    _wait_until_nothing_runs(data_dir / "pg")


def test_a_server_left_by_killed_users_is_adopted_and_stopped_by_the_next_ones_exit(data_dir, holder):
    pgdata = data_dir / "pg"
    for proc in _started_by_raiox(pgdata):  # the watchdog too, as a `kill -9` of the whole group would
        if "raiox_core.pg_watchdog" in proc.cmdline():
            proc.kill()
    holder.kill()
    holder.wait()
    assert embedded_pg.postmaster_pid(pgdata) is not None  # orphaned, with a dead user on its list
    server = embedded_pg.start(data_dir)
    assert json.loads((pgdata / embedded_pg.HANDLES).read_text()) == [os.getpid()]  # the dead one forgotten
    server.cleanup()  # this process's exit: the last user now, so it stops the server
    assert embedded_pg.postmaster_pid(pgdata) is None
    _wait_until_nothing_runs(pgdata)


def test_one_watchdog_per_server_however_many_commands_join_it(data_dir, holder):
    """Each command that joins a running server checks for its watchdog; a second one must not stay."""
    pgdata = data_dir / "pg"
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-m", "raiox_core.cli", "stats"], capture_output=True, text=True,
                              env=_embedded_env(data_dir), timeout=120)
        assert proc.returncode == 0, proc.stderr
    # A needless watchdog is running by the time the command that started it has exited; it must find the
    # first one's lock and exit. Wait for that (a watchdog that stays fails the test at the deadline).
    deadline = time.monotonic() + GONE_WITHIN_S
    while len(watchdogs := [p.info["cmdline"] for p in _started_by_raiox(pgdata)
                            if "raiox_core.pg_watchdog" in p.info["cmdline"]]) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(watchdogs) == 1, watchdogs
