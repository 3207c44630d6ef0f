"""Searches on a read replica (RAIOX_DATABASE_READ_URL): a real streaming standby of the session's embedded
PostgreSQL, made with pg_basebackup and started by pgserver."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import psycopg
import pytest

from raiox_core.config import Settings
from raiox_core.db import Database, open_database
from raiox_core.errors import ConfigError
from tests.db import test_db
from tests.db.test_db import row

pytestmark = pytest.mark.slow
MODEL = "replica-test"


@pytest.fixture(scope="module")
def replica(pg_url):
    """A hot standby streaming from the session's server, on a socket directory of its own."""
    import pgserver
    from pgserver._commands import POSTGRES_BIN_PATH

    primary_socket = parse_qs(urlsplit(pg_url).query)["host"][0]
    standby = Path(tempfile.mkdtemp(prefix="raiox-test-standby-"))
    user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs postgres as this user under root
    if user:
        shutil.chown(standby, user)
    subprocess.run([str(POSTGRES_BIN_PATH / "pg_basebackup"), "-h", primary_socket, "-U", "postgres", "-D",
                    str(standby), "-R", "-X", "stream", "-c", "fast"], check=True, user=user, capture_output=True, timeout=120)
    for copied in (".handle_pids.json", ".s.PGSQL.5432.lock"):  # the primary's (its socket is in its pgdata)
        (standby / copied).unlink(missing_ok=True)
    server = pgserver.get_server(standby, cleanup_mode="delete")
    yield server
    server.cleanup()


def stop(server) -> None:
    """Stop the standby (pg_ctl stop, fast): a replica host that went down."""
    from pgserver._commands import pg_ctl

    pg_ctl(["-m", "fast", "-w", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)


def unit(seed: int) -> np.ndarray:
    return test_db.unit(np.random.default_rng(seed))


def add(db: Database, n: int, start: int = 0) -> list[int]:
    """n references with vectors of MODEL, written through the primary; their ids."""
    ids = []
    for i in range(start, start + n):
        with db.inserting(row(i), {MODEL: unit(i)}) as ref_id:
            pass
        ids.append(ref_id)
    return ids


def wait_replayed(replica_url: str, reference_id: int) -> None:
    deadline = time.monotonic() + 30
    with psycopg.connect(replica_url, autocommit=True) as conn:
        while not conn.execute("SELECT 1 FROM reference_implants WHERE id = %s", (reference_id,)).fetchone():
            assert time.monotonic() < deadline, "the standby did not replay the insert within 30 s"
            time.sleep(0.1)


def holding_a_lock_then_in_recovery(connection) -> bool:
    """A search's work for _on_replica: read the references table, then (on a standby only) keep its lock."""
    with connection() as conn:
        conn.execute("SELECT count(*) FROM reference_implants")  # AccessShareLock until the transaction ends
        return conn.execute("SELECT pg_is_in_recovery(), pg_sleep(CASE WHEN pg_is_in_recovery() THEN 60 ELSE 0 END)"
                            ).fetchone()[0]


def test_a_search_the_standby_cancels_for_its_replay_is_answered_by_the_primary(db, pg_url, replica, caplog):
    """A real recovery conflict: the primary takes an ACCESS EXCLUSIVE lock, whose replay on the standby
    (max_standby_streaming_delay 0) cancels the standby query holding the table (SQLSTATE 40001)."""
    import threading

    with replica._lock:
        replica.ensure_postgres_running()  # another test of this module stops it
    replica_url = replica.get_uri()
    routed = Database(pg_url, description="primary", read_url=replica_url, read_description="replica", timeout_s=5)
    standby = psycopg.connect(replica_url, autocommit=True)
    standby.execute("ALTER SYSTEM SET max_standby_streaming_delay = 0")
    standby.execute("SELECT pg_reload_conf()")
    answer: list = []
    search = threading.Thread(target=lambda: answer.append(routed._on_replica(holding_a_lock_then_in_recovery)))
    try:
        with caplog.at_level("INFO", logger="raiox_core.db"):
            search.start()
            deadline = time.monotonic() + 30
            while not standby.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_is_in_recovery(), pg_sleep%'"
                                      " AND pid <> pg_backend_pid()").fetchone():
                assert time.monotonic() < deadline, "the search never reached the standby"
                time.sleep(0.05)
            with psycopg.connect(pg_url) as primary:  # one transaction, holding the lock until it ends
                primary.execute("LOCK TABLE reference_implants IN ACCESS EXCLUSIVE MODE")
                with psycopg.connect(pg_url, autocommit=True) as other:
                    other.execute("SELECT pg_switch_wal()")  # ships the lock's WAL record now
                while not any("cancelled a search" in r.getMessage() for r in caplog.records):
                    assert time.monotonic() < deadline + 30, "the standby did not cancel the search"
                    time.sleep(0.05)
            search.join(30)  # the lock released: the primary answers
        assert answer == [False]  # answered by the primary, not in recovery
        assert "conflict with its replication" in caplog.text
        assert routed._on_replica(lambda connection: _in_recovery(connection))  # the replica still takes searches
    finally:
        standby.execute("ALTER SYSTEM RESET max_standby_streaming_delay")
        standby.execute("SELECT pg_reload_conf()")
        standby.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(CASE%'"
                        " AND pid <> pg_backend_pid()")
        standby.close()
        search.join(30)
        routed.close()


def _in_recovery(connection) -> bool:
    with connection() as conn:
        return conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]


def test_searches_go_to_the_replica_and_to_the_primary_while_it_is_down(db, pg_url, replica, settings, monkeypatch,
                                                                       capsys):
    from raiox_core import cli

    replica_url = replica.get_uri()
    with psycopg.connect(replica_url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # a real standby, read-only
    routed = Database(pg_url, description="primary", read_url=replica_url, read_description="replica", timeout_s=2)
    try:
        first = add(db, 30)
        wait_replayed(replica_url, first[-1])
        hits = routed.search(unit(3), MODEL, k=3)
        assert [h["id"] for h in hits][0] == first[3] and hits == db.search(unit(3), MODEL, k=3)

        with psycopg.connect(replica_url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")  # the replica stops at what it has
            try:
                (late,) = add(db, 1, start=100)
                assert db.search(unit(100), MODEL, k=1)[0]["id"] == late  # on the primary
                assert routed.search(unit(100), MODEL, k=1)[0]["id"] != late  # not yet on the replica: read there
            finally:
                conn.execute("SELECT pg_wal_replay_resume()")
        wait_replayed(replica_url, late)
        assert routed.search(unit(100), MODEL, k=1)[0]["id"] == late

        for name, value in (("RAIOX_DATABASE_URL", pg_url), ("RAIOX_DATABASE_READ_URL", replica_url),
                            ("RAIOX_DATA_DIR", str(settings.data_dir))):
            monkeypatch.setenv(name, value)
        cli.main(["doctor"])
        out = capsys.readouterr().out
        (line,) = [line for line in out.splitlines() if line[5:13].strip() == "replica"] or [out]
        assert line.startswith("ok") and "a standby taking the searches (last change replayed" in line, line

        stop(replica)  # the replica down: searches answer from the primary, no error
        (later,) = add(db, 1, start=200)
        assert routed.search(unit(200), MODEL, k=1)[0]["id"] == later
    finally:
        routed.close()


def test_a_replica_needs_a_primary_url_and_a_valid_url(tmp_path):
    with pytest.raises(ConfigError, match="set that too"):
        open_database(Settings(data_dir=tmp_path, database_read_url="postgresql://replica/raiox"))
    with pytest.raises(ConfigError, match="RAIOX_DATABASE_READ_URL is not a valid PostgreSQL URL") as err:
        open_database(Settings(data_dir=tmp_path, database_url="postgresql://u:pw@127.0.0.1:1/raiox",
                               database_read_url="postgresql://u:secret@host/raiox?bogus=1"))
    assert "secret" not in str(err.value)
    assert Settings.from_env({"RAIOX_DATABASE_READ_URL": "postgresql://r/x"}).database_read_url == "postgresql://r/x"
