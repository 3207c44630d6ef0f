"""/docs in a real Chromium with every request off this machine refused: the API documents itself offline."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from tests.e2e.test_browser import browser  # noqa: F401  (a module-scoped fixture)

pytestmark = [pytest.mark.e2e]


def test_docs_render_without_the_internet(api, browser):  # noqa: F811
    html = api.client.get("/docs").text
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)
    assert assets and all(a.startswith("/") for a in assets), assets
    page = browser.new_page()
    off_machine = []

    def only_here(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            return route.continue_()
        off_machine.append(route.request.url)
        return route.abort()

    page.route("**/*", only_here)
    page.goto(f"{api.url}/docs")
    page.get_by_text("/v1/webhooks/jotform/{key}").first.wait_for(timeout=60_000)
    assert "/v1/match" in page.inner_text("body")
    assert off_machine == []
    page.close()
