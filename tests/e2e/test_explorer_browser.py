"""The explorer in Chromium: the PCA preview with the UMAP fit's progress at once, the UMAP map replacing it
(and the bar gone), and a reload showing the cached map straight away."""

from __future__ import annotations

import pytest

from tests.e2e.test_browser import app_home, app_url, browser, expect_text, wait_idle  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PROGRESS = "[data-testid='stProgress']"


def test_pca_preview_with_progress_then_the_umap_map_and_a_reload_keeps_it(browser, app_url, app_home):  # noqa: F811
    page = browser.new_page()
    page.goto(f"{app_url}/explorer")
    log = app_home / "app.log"
    # UMAP is the default method: the first view is the PCA of the same vectors, with the fit's progress.
    expect_text(page, "being computed in the background", log, timeout_ms=120_000)
    page.locator(PROGRESS).first.wait_for(timeout=30_000)
    assert page.get_by_text("PCA ·").first.is_visible()
    page.locator("[data-testid='stPlotlyChart']").first.wait_for(timeout=60_000)  # a map to look at meanwhile

    # The map replaces the preview when the fit is done (the first UMAP in a server compiles for up to a minute).
    expect_text(page, "UMAP · ", log, timeout_ms=300_000)  # the map's caption (the bar says "n_neighbors" too)
    wait_idle(page)
    assert page.locator(PROGRESS).count() == 0, ("progress bars stayed after the map replaced the preview: "
                                                 f"{page.locator(PROGRESS).all_inner_texts()}")
    assert page.get_by_text("being computed in the background").count() == 0
    assert page.locator("[data-testid='stException']").count() == 0

    page.reload()  # a new session: the map comes from the cache, at once and without a preview
    expect_text(page, "UMAP · ", log, timeout_ms=60_000)
    wait_idle(page)
    assert page.get_by_text("loaded from cache").first.is_visible()
    assert page.locator(PROGRESS).count() == 0 and page.get_by_text("being computed").count() == 0
    page.close()
