"""The sidebar says the database is unreachable at the first render after it stops, not when a cache expires."""

from __future__ import annotations

from tests.app.test_model_state import configure, dashboard
from tests.reliability.conftest import own_pg  # noqa: F401  (a fixture: a PostgreSQL this test stops)


def test_the_sidebar_follows_a_database_outage_at_once(app_env, own_pg, monkeypatch):  # noqa: F811
    from app import resources

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
    finally:
        own_pg.start()
        resources.get_db.clear()  # the next test's app opens the shared test database again
