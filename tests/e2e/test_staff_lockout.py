"""The staff lockout in a real Chromium: five wrong passwords on /ingest, a reload before every attempt, and
the lock still there afterwards, until it runs out on the server.

One address only: Chromium reaches 127.0.0.2 from 127.0.0.1 too, so loopback cannot play a second host here
(tests/core/test_sign_in.py covers addresses apart)."""

from __future__ import annotations


import pytest

from tests.e2e.test_browser import browser, serve_dashboard, wait_idle  # noqa: F401  (browser: a fixture)
from tests.sign_in_tools import age_failures, failures_by_client
from tests.envs import subprocess_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STAFF_PASSWORD = "lockout e2e staff password"


@pytest.fixture(scope="module")
def app_port(tmp_path_factory, port_factory, pg_url, _database):
    """A dashboard over the session's database, so the test can read the failures it recorded."""
    with _database.connection() as conn:
        conn.execute("TRUNCATE staff_sign_in_failures")
    data = tmp_path_factory.mktemp("lockout")
    env = subprocess_env()
    env.update(RAIOX_DATA_DIR=str(data / "data"), RAIOX_DATABASE_URL=pg_url, RAIOX_PRETRAINED="none",
               RAIOX_DEVICE="cpu", HF_HUB_OFFLINE="1", RAIOX_STAFF_PASSWORD=STAFF_PASSWORD)
    port = port_factory()
    with serve_dashboard(env, data / "app.log", port):
        yield port


def sign_in(page, password: str) -> None:
    page.get_by_label("Staff password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_lockout_survives_reloads_until_it_runs_out(browser, app_port, _database):  # noqa: F811
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{app_port}/ingest")
    for n in range(1, 6):
        page.reload()  # a fresh browser session for every attempt
        wait_idle(page)
        sign_in(page, f"wrong guess {n}")
        page.get_by_text("Wrong staff password").first.wait_for(timeout=60_000)
    assert "paused for 60 s" in page.inner_text("body")
    assert list(failures_by_client(_database).values()) == [5]  # counted by the server, for this one client

    page.reload()
    wait_idle(page)
    sign_in(page, STAFF_PASSWORD)  # the right password, but from the locked address
    page.get_by_text("Too many wrong passwords from this address").first.wait_for(timeout=60_000)
    wait_idle(page)
    assert page.get_by_role("button", name="Sign out").count() == 0
    assert page.locator("input[type='file']").count() == 0

    age_failures(_database, 61)  # the minute is over
    page.reload()
    wait_idle(page)
    sign_in(page, STAFF_PASSWORD)
    page.get_by_role("button", name="Sign out").wait_for(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    assert failures_by_client(_database) == {}  # a sign-in forgets the address's failures
    page.close()
