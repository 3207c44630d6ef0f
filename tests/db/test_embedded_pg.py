"""The embedded server's tuning: shared_buffers sized for the HNSW index, applied without disrupting anyone."""

import shutil
import tempfile
from pathlib import Path

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
    shutil.rmtree(path, ignore_errors=True)


def test_sizing_is_a_quarter_of_ram_within_bounds():
    assert 128 <= embedded_pg.shared_buffers_mb() <= embedded_pg.SHARED_BUFFERS_MAX_MB


def test_a_new_server_starts_with_the_tuned_shared_buffers(data_dir):
    server = embedded_pg.start(data_dir)
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            assert _shared_buffers(conn) == (embedded_pg.shared_buffers_mb(), False)
    finally:
        server.cleanup()


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
