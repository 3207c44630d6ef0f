"""End to end in a real Chromium: `raiox app` on a free port over a seeded embedded database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from raiox_core.synthetic import demo_files
from tests.envs import subprocess_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PAGES = ["match", "references", "explorer", "ingest"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("RAIOX_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here (RAIOX_REQUIRE_BROWSER is set) but is not on the PATH.")
        pytest.skip("Chromium is not installed (apt-get install -y chromium).")
    return path


@pytest.fixture(scope="module")
def app_home(tmp_path_factory) -> Path:
    """The dashboard's directory: its data dir (and so its embedded database) is app_home / "data"."""
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def app_url(app_home, port_factory):
    data = app_home
    env = subprocess_env()
    env.update(RAIOX_DATA_DIR=str(data / "data"), RAIOX_PRETRAINED="none", RAIOX_DEVICE="cpu", HF_HUB_OFFLINE="1",
               RAIOX_STAFF_PASSWORD="e2e staff password")
    cli = [sys.executable, "-m", "raiox_core.cli"]
    seeded = subprocess.run(cli + ["demo", "--no-app"], env=env, capture_output=True, text=True, timeout=600)
    assert seeded.returncode == 0, seeded.stderr
    with serve_dashboard(env, data / "app.log", port_factory()) as url:
        yield url


@contextmanager
def serve_dashboard(env: dict, log_path, port: int) -> Iterator[str]:
    """`raiox app` with `env` on `port` (all interfaces), logging to `log_path`; yields its URL once healthy."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "raiox_core.cli", "app", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("The dashboard did not start: " + Path(log_path).read_text()[-2000:])
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


def wait_idle(page, timeout_ms=180_000):
    """Wait for the sidebar's disclaimer (the script has run), then for the running indicator to go."""
    page.get_by_text("Decision support, not a diagnosis").first.wait_for(timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms
    )


PROBLEM = "[data-testid='stException'], [data-testid='stAlertContentError']"


def expect_text(page, text: str, log_path: Path, timeout_ms: int = 180_000) -> None:
    """Wait for `text` on the page. An exception or error shown instead fails at once, and any failure reports
    what the page says and the end of the dashboard's log: a bare timeout in CI says nothing about the cause."""
    wanted = page.get_by_text(text).first
    try:
        wanted.or_(page.locator(PROBLEM).first).wait_for(timeout=timeout_ms)
        if wanted.is_visible():
            return
        why = "the page shows an error instead"
    except PlaywrightTimeout:
        why = f"nothing within {timeout_ms / 1000:g} s"
    shown = " | ".join(page.locator(PROBLEM).all_inner_texts()) or page.inner_text("body")[-1500:]
    log = Path(log_path).read_text(errors="replace")[-3000:] if Path(log_path).exists() else "(no log)"
    pytest.fail(f"Waited for {text!r}: {why}.\nThe page: {shown}\nThe dashboard's log:\n{log}")


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_without_exception(browser, app_url, name):
    page = browser.new_page()
    page.goto(f"{app_url}/{name}")
    wait_idle(page)
    page.wait_for_selector("[data-testid='stSidebar']", timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    body = page.inner_text("body")
    assert "Decision support, not a diagnosis" in body
    assert "Untrained model weights" in body
    page.close()


def matched_page(browser, app_url, tmp_path):
    """/match after uploading a copy of a seeded reference, once its result cards are drawn."""
    name, data = demo_files(per_diameter=1)[3]
    xray = tmp_path / "query.png"
    xray.write_bytes(data)
    page = browser.new_page()
    page.goto(f"{app_url}/match")
    wait_idle(page)
    page.locator("input[type='file']").first.set_input_files(str(xray))
    # The exact copy of a reference comes back as the first result card.
    page.get_by_text("1. Nobel Biocare ACTIVE").first.wait_for(timeout=180_000)
    wait_idle(page)
    return page


def test_upload_on_match_shows_result_cards(browser, app_url, tmp_path):
    page = matched_page(browser, app_url, tmp_path)
    assert page.locator("[data-testid='stException']").count() == 0
    assert "%" in page.inner_text("body")
    page.screenshot(path=str(tmp_path / "match.png"), full_page=True)
    page.close()


def _form_submissions(data_dir: Path) -> dict[str, str]:
    """Three submissions in the dashboard's database, as the API's webhook leaves them; id -> status."""
    from raiox_core import submissions
    from raiox_core.config import Settings
    from raiox_core.db import open_database
    from raiox_core.jotform import Submission

    db = open_database(Settings(data_dir=data_dir))
    try:
        made = {"7001": "done", "7002": "failed", "7003": "pending"}
        for sid in made:
            assert submissions.claim(db, Submission(form_id="231", submission_id=sid, uploads=()))
        hostile = "<img src=x onerror=alert(1)> **bold**"
        submissions.finish(db, "7001", "done", [{"file": "q5_xray", "answer": hostile, "matches": [
            {"id": 3, "manufacturer": "Nobel Biocare", "model": "ACTIVE", "diameter_mm": 3.5, "similarity": 0.912}]}], None)
        submissions.finish(db, "7002", "failed", [], "q5_xray: 127.0.0.2 is not an allowed file host.")
    finally:
        db.close()
    return made


def test_staff_see_the_form_submissions_on_match(browser, app_url, app_home):
    made = _form_submissions(app_home / "data")
    page = browser.new_page()
    page.goto(f"{app_url}/match")
    wait_idle(page)
    assert "Form submissions" not in page.inner_text("body")  # not signed in

    page.goto(f"{app_url}/ingest")
    wait_idle(page)
    page.get_by_label("Staff password").fill("e2e staff password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for(timeout=60_000)
    page.get_by_role("link", name="Match an X-ray").click()  # within the session: still signed in
    panel = page.get_by_text("Form submissions (latest 20: 1 done, 1 failed, 1 pending)")
    panel.wait_for(timeout=60_000)
    panel.click()
    table = page.locator("[data-testid='stDataFrame'] table").first  # the grid's cells, for screen readers
    table.wait_for(state="attached", timeout=60_000)
    page.wait_for_function("t => t.textContent.includes('7003')", arg=table.element_handle(), timeout=30_000)
    cells = table.text_content()
    for sid in made:
        assert sid in cells
    assert "q5_xray: <img src=x onerror=alert(1)> **bold**" in cells  # as text
    assert "#3 Nobel Biocare ACTIVE 3.5 mm" in cells and "127.0.0.2 is not an allowed file host" in cells
    assert page.locator("img[src='x']").count() == 0 and page.locator("[data-testid='stException']").count() == 0

    other = browser.new_page()  # a second session, never signed in
    other.goto(f"{app_url}/match")
    wait_idle(other)
    assert "Form submissions" not in other.inner_text("body")
    page.reload()  # a reload is a new session: signed out
    wait_idle(page)
    assert "Form submissions" not in page.inner_text("body")
    other.close()
    page.close()


def test_similarity_map_toggle_and_occlusion_check_on_match(browser, app_url, tmp_path):
    page = matched_page(browser, app_url, tmp_path)
    page.get_by_text("Similarity map: regions that look alike").click()
    page.get_by_text("Query: regions that look alike").first.wait_for(timeout=180_000)
    # The legend comes after the overlays in the same run: waited for, not read while the script still runs.
    page.get_by_text("not a causal explanation").first.wait_for(timeout=180_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    page.get_by_role("button", name="Occlusion check").click()
    page.get_by_text("Deletion curve", exact=True).first.wait_for(timeout=180_000)  # the chart's title
    page.get_by_text("The map is").or_(page.get_by_text("Undecided:")).first.wait_for(timeout=60_000)  # the verdict
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)
    page.close()
