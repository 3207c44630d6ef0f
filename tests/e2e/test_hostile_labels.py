"""Hostile labels and file names in a real Chromium: shown as typed on every page, never as links or images.

References whose manufacturer, model and file name are Markdown links and images, raw HTML, bare and
javascript: URLs, Streamlit directives and LaTeX go through the real ingestion; then every page that
shows them is visited. On each: no link or image points off this machine, no request leaves 127.0.0.1,
and the hostile strings are there as visible text.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from raiox_dashboard.widgets import WORD_JOINER
from raiox_core.images import ImageLimits
from raiox_core.synthetic import demo_files
from tests.e2e.test_browser import browser, serve_dashboard, wait_idle  # noqa: F401  (browser: one Chromium)
from tests.envs import subprocess_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STAFF_PASSWORD = "hostile e2e staff password"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

# (manufacturer, model, file name). Models are stored upper-cased; a file name holds no '/'.
CORPUS = [
    ("[x](https://evil.example) ![t](https://evil.example/t.png)", "[M](HTTPS://EVIL.EXAMPLE/M)",
     "![f](https:evil.example) [g](javascript:alert(1)).png"),
    ("<img src=https://evil.example/i.png onerror=alert(1)> <a href=https://evil.example>a</a>", "<B>BOLD<BR>",
     "<img src=x onerror=alert(1)> &lt;b&gt;.png"),
    ("https://evil.example/bare www.evil.example", "WWW.EVIL.EXAMPLE", "https:__evil.example www.evil.example.png"),
    ("<script>alert(1)</script> [j](javascript:alert(1))", "JAVASCRIPT:ALERT(1)", "<script>x</script>.png"),
    (":red[Red] $x^2$ **bold** <https://evil.example/auto> a@evil.example :smile:", ":BLUE[B] $Y$ :MATERIAL/HOME:",
     ":red[f] $z$ **b** :material/home:.png"),
]
PLAIN = ("Acme", "PLAIN", "plain.png")  # a reference whose labels staff correct in the browser


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory, port_factory, pg_url, _database, embedder):
    """One dashboard over the session's database, holding only the hostile corpus (and one plain reference)."""
    from raiox_core.config import Settings
    from raiox_core.ingest import LabelOverride, Source, ingest
    from raiox_core.storage import open_storage

    data = tmp_path_factory.mktemp("hostile")
    with _database.connection() as conn:
        conn.execute("TRUNCATE reference_implants, embeddings, match_log RESTART IDENTITY CASCADE")
    settings = Settings(data_dir=data / "data", database_url=pg_url, pretrained="none", device="cpu")
    images = [d for _, d in demo_files(per_diameter=1)[: len(CORPUS) + 1]]
    sources = [Source.from_bytes(f, d, LabelOverride(m, mo, 3.75)) for (m, mo, f), d in zip([*CORPUS, PLAIN], images)]
    report = ingest(sources, db=_database, storage=open_storage(settings), embedder=embedder, limits=ImageLimits())
    assert len(report.ingested) == len(sources), report.to_json()
    env = subprocess_env()
    env.update(RAIOX_DATA_DIR=str(data / "data"), RAIOX_DATABASE_URL=pg_url, RAIOX_PRETRAINED="none",
               RAIOX_DEVICE="cpu", HF_HUB_OFFLINE="1", RAIOX_STAFF_PASSWORD=STAFF_PASSWORD)
    with serve_dashboard(env, data / "app.log", port_factory()) as url:
        yield {"url": url, "ids": [item.id for item in report.ingested], "images": images}


@pytest.fixture
def visit(browser, hostile_app):
    """visit(path) -> a page with every request it makes recorded; checked for inertness on the way out."""
    context = browser.new_context()
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    pages = []

    def open_path(path: str):
        page = context.new_page()
        page.goto(hostile_app["url"] + path)
        wait_idle(page)
        pages.append(page)
        return page

    yield open_path
    for page in pages:
        assert_inert(page, requests)
    context.close()


def _off_machine(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return False
    return parts.scheme not in ("http", "https", "ws", "wss") or parts.hostname not in LOCAL_HOSTS


# Where an offending element stands, for the failure message: the Streamlit element around it.
_WHERE = "(e.closest('[data-testid^=st]') || e).getAttribute('data-testid') + ': ' + e.outerHTML.slice(0, 160)"


def assert_inert(page, requests: list[str]) -> None:
    """No exception box, no link or image that leaves this machine, no request that did."""
    assert page.locator("[data-testid='stException']").count() == 0
    links = page.eval_on_selector_all("a[href]", f"els => els.map(e => [e.href, {_WHERE}])")
    assert not [(h, where) for h, where in links if _off_machine(h) or "evil" in h.lower()]
    sources = page.eval_on_selector_all(
        "img, image, source, video, audio, iframe, embed, object",
        "els => els.map(e => [e.currentSrc || e.src || e.getAttribute('href') || e.getAttribute('xlink:href')"
        f" || e.getAttribute('data') || '', {_WHERE}])",
    )
    assert not [(s, where) for s, where in sources if s and (_off_machine(s) or "evil" in s.lower())]
    assert page.locator("script:not([src])", has_text="alert").count() == 0
    assert not [r for r in requests if _off_machine(r)], requests


def shown_text(page) -> str:
    """What a person can read: the page's text plus plotly's SVG text (legends, axes, hover)."""
    svg = page.eval_on_selector_all("svg text", "els => els.map(e => e.textContent)")
    return (page.inner_text("body") + "\n" + "\n".join(svg)).replace(WORD_JOINER, "")  # invisible


def wait_for_text(page, text: str, timeout_ms: int = 120_000) -> None:
    page.wait_for_function("t => document.body.innerText.replaceAll('\u2060', '').includes(t)", arg=text,
                           timeout=timeout_ms)


def sign_in(page) -> None:
    page.get_by_label("Staff password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for(timeout=60_000)
    wait_idle(page)


def test_references_gallery_and_counts_chart(visit):
    page = visit("/references")
    page.get_by_text("Counts per manufacturer and model").click()
    page.locator(".legend").first.wait_for(timeout=60_000)
    text = shown_text(page)
    for manufacturer, model, _ in CORPUS:
        assert f"{manufacturer} {model} 3.75 mm" in text  # the gallery caption, as typed
        assert manufacturer in text  # the chart's legend


def test_reference_detail_and_neighbours(visit, hostile_app):
    first = hostile_app["ids"][0]
    page = visit(f"/references?id={first}")
    wait_for_text(page, "Nearest references")
    for manufacturer, model, _ in CORPUS:  # the neighbours come after their heading (on a busy machine, later)
        wait_for_text(page, f"{manufacturer} {model} 3.75 mm", timeout_ms=60_000)
    text = shown_text(page)
    assert f"{CORPUS[0][0]} {CORPUS[0][1]} 3.75 mm" in text  # the detail's label
    for manufacturer, model, _ in CORPUS[1:]:
        assert f"{manufacturer} {model} 3.75 mm" in text  # gallery and neighbour captions
    # The file name is in the detail's table, drawn on a canvas (no DOM text); the AppTest checks its value.


def test_explorer_legend_and_picked_reference(visit, hostile_app):
    page = visit("/explorer")
    page.locator(".legend").first.wait_for(timeout=120_000)
    legend = "\n".join(page.eval_on_selector_all(".legend text", "els => els.map(e => e.textContent)"))
    for manufacturer, _, _ in CORPUS:
        assert manufacturer in legend
    target = hostile_app["ids"][1]
    page.get_by_role("combobox", name="Pick a reference").click()
    page.keyboard.type(f"#{target} ")
    page.keyboard.press("Enter")
    wait_for_text(page, CORPUS[1][2])  # the picked reference's caption names its file
    wait_idle(page)
    assert f"#{target} · {CORPUS[1][0]} {CORPUS[1][1]}" in shown_text(page)


def test_explorer_upload_with_a_hostile_file_name(visit, hostile_app):
    page = visit("/explorer")
    name = "[q](https://evil.example) <img src=https://evil.example/q.png>.png"
    page.locator("input[type='file']").first.set_input_files(
        {"name": name, "mimeType": "image/png", "buffer": hostile_app["images"][2]})
    wait_for_text(page, name)
    page.locator(".legend").first.wait_for(timeout=120_000)
    wait_idle(page)


def test_match_result_with_hostile_neighbours(visit, hostile_app):
    page = visit("/match")
    page.locator("input[type='file']").first.set_input_files(
        {"name": "query.png", "mimeType": "image/png", "buffer": hostile_app["images"][0]})
    page.get_by_text("Feedback").first.wait_for(timeout=180_000)
    wait_idle(page)
    page.locator(".main-svg").first.wait_for(timeout=60_000)
    text = shown_text(page)
    top = f"{CORPUS[0][0]} {CORPUS[0][1]}"
    assert f"1. {top}" in text  # the result card
    # The query is the first reference's own image: the feedback prompt asks about that answer.
    assert f"The answer, reference #{hostile_app['ids'][0]} ({top}), is" in text
    assert f"{top} Ø 3.75 mm" in text  # the compare caption
    assert CORPUS[0][0] in text and CORPUS[1][0] in text  # the vote chart


def test_ingest_table_with_hostile_file_names(visit, hostile_app):
    page = visit("/ingest")
    sign_in(page)
    names = [f for _, _, f in CORPUS]
    page.locator("input[type='file']").first.set_input_files(
        [{"name": n, "mimeType": "image/png", "buffer": d} for n, d in zip(names, hostile_app["images"])])
    # Each file is checked (the images are the references' own, so all are duplicates) and listed in the
    # table, which is drawn on a canvas; the uploader's list shortens long names.
    wait_for_text(page, f"0 ready, {len(names)} duplicates, 0 rejected.")
    wait_idle(page)


def test_relabel_form_shows_the_stored_labels(visit, hostile_app):
    plain = hostile_app["ids"][-1]
    page = visit(f"/references?id={plain}")
    sign_in(page)
    manufacturer = page.get_by_role("textbox", name="Manufacturer", exact=True)  # not the gallery's filter
    manufacturer.fill("straumann")
    page.get_by_role("button", name="Save labels").click()
    wait_for_text(page, f"Reference #{plain} relabelled.")
    wait_idle(page)
    expect(manufacturer).to_have_value("Straumann", timeout=30_000)  # canonicalised, as stored, not as typed
