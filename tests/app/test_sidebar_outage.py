"""The sidebar says the database is unreachable at the first render after it stops, not when a cache expires."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.app.test_model_state import configure, dashboard
from tests.reliability.conftest import own_pg  # noqa: F401  (a fixture: a PostgreSQL this test stops)


def test_the_sidebar_follows_a_database_outage_at_once(app_env, own_pg, monkeypatch):  # noqa: F811
    from raiox_dashboard import resources

    configure(monkeypatch, RAIOX_DATABASE_URL=own_pg.url, RAIOX_DB_TIMEOUT_S="2")
    resources.get_db.clear()
    try:
        at = dashboard().run()
        assert not at.exception
        assert any(m.value == "**Database** (external): reachable" for m in at.sidebar.markdown)
        own_pg.stop()
        at.run()  # within the 60 s that the reference counts stay cached
        assert any(e.value.startswith("Database (external) unreachable") for e in at.sidebar.error)
        assert not any(m.value.endswith(": reachable") for m in at.sidebar.markdown)
        own_pg.start()
        at.run()
        assert any(m.value == "**Database** (external): reachable" for m in at.sidebar.markdown)
        assert not at.main.error

        # A server that stops answering (frozen, or packets dropped): the render ends, and says so.
        with frozen(own_pg):
            at.run()
            assert any(e.value.startswith("Database (external) unreachable") for e in at.sidebar.error)
            assert any(e.value.startswith("The database cannot be reached") for e in at.main.error)
        at.run()
        assert any(m.value == "**Database** (external): reachable" for m in at.sidebar.markdown)
    finally:
        own_pg.start()
        resources.get_db.clear()  # the next test's app opens the shared test database again


class frozen:
    """SIGSTOP the server's postmaster and backends for the block: a server that accepts but never answers."""

    def __init__(self, server) -> None:
        postmaster = int((Path(server.server.pgdata) / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True)
        self.pids = [postmaster, *(int(p) for p in children.stdout.split())]

    def __enter__(self):
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)

    def __exit__(self, *exc):
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)


def test_the_dashboard_starts_its_embedded_database_again(app_env, monkeypatch):
    """The embedded server is the dashboard's own: stopped under it, the next render starts it again."""
    import shutil
    import tempfile

    from raiox_dashboard import resources
    from raiox_core import embedded_pg

    data_dir = Path(tempfile.mkdtemp(prefix="raiox-test-restart-"))  # not pytest's: postgres runs as another user
    monkeypatch.delenv("RAIOX_DATABASE_URL")
    configure(monkeypatch, RAIOX_DATA_DIR=str(data_dir))
    resources.get_db.clear()
    try:
        at = dashboard().run()
        assert any(m.value == "**Database** (embedded): reachable" for m in at.sidebar.markdown)
        embedded_pg.stop(data_dir / "pg")
        at.run()
        assert not at.exception and not at.sidebar.error and not at.main.error
        assert any(m.value == "**Database** (embedded): reachable" for m in at.sidebar.markdown)
        assert embedded_pg.postmaster_pid(data_dir / "pg") is not None
    finally:
        resources.get_db().close()
        resources.get_db.clear()
        if embedded_pg.postmaster_pid(data_dir / "pg") is not None:
            embedded_pg.stop(data_dir / "pg")
        shutil.rmtree(data_dir, ignore_errors=True)
