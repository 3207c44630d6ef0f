"""The /ingest label table in a real Chromium: labels typed into cells, by keyboard and by mouse, are
what gets stored (AppTest sets the editor's state directly, which a browser never does)."""

from __future__ import annotations

import io

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.e2e.test_browser import app_home, app_url, browser, expect_text, wait_idle  # noqa: F401  (module-scoped fixtures)
from tests.reliability.conftest import picture

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STAFF_PASSWORD = "e2e staff password"  # what the app_url fixture configures
ROW_PX = 35  # the editor's header and row height
# The label editor's column widths, as pages/ingest.py's COLUMN_PX sets them (importing a page runs it).
COLUMN_PX = {"file": 280, "manufacturer": 180, "model": 150, "diameter_mm": 130}


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    picture(seed).save(buf, format="PNG")  # new pictures: not copies of the seeded references
    return buf.getvalue()


def _cell(page, row: int, column: str) -> tuple[float, float]:
    """Page coordinates of the middle of one cell of the label editor (the first table on the page)."""
    box = page.locator("[data-testid='stDataFrame']").first.bounding_box()
    left = sum(COLUMN_PX[c] for c in list(COLUMN_PX)[: list(COLUMN_PX).index(column)])
    return box["x"] + left + COLUMN_PX[column] / 2, box["y"] + ROW_PX * (row + 1) + ROW_PX / 2


# Each grid (the label editor, then the validation table) renders a hidden <table> of its cells for screen readers
# once drawn; the cell the grid has selected there has the focus, until a cell editor opens and takes it.
GRID_TABLES = "[data-testid='stDataFrame'] table"
EDITING = "() => document.activeElement && document.activeElement.classList.contains('gdg-input')"
CELL_STATE = """([tables, id]) => { const editor = document.querySelectorAll(tables)[0], a = document.activeElement;
    if (a && a.classList.contains('gdg-input')) return 'editing';
    return editor && a && editor.contains(a) && a.id === id ? 'selected' : null; }"""
SHOWS = "text => document.activeElement && document.activeElement.value === text"
VALIDATION_CHANGED = """([tables, before]) => { const t = document.querySelectorAll(tables)[1];
    return t && t.textContent && t.textContent !== before; }"""


def _validation(page) -> str:
    """The validation table's text, once both grids are drawn (a click before that may land on nothing)."""
    table = page.locator(GRID_TABLES).nth(1)
    table.wait_for(state="attached", timeout=60_000)
    return table.text_content()


def _cell_state(page, row: int, column: str) -> str:
    """Wait until the grid has selected one cell of the label editor or opened a cell editor (a click, a double-
    click or a key takes a moment; a double-click opens a number cell's editor, only selects a text cell)."""
    cell = f"glide-cell-{list(COLUMN_PX).index(column)}-{row}"
    return page.wait_for_function(CELL_STATE, arg=[GRID_TABLES, cell], timeout=10_000).json_value()


def _open_editor(page, row: int, column: str) -> None:
    """Double-click a number cell, then wait for its editor itself: the grid handles the two clicks in turn,
    and a key typed while it shows the first click's selection would be lost to the second click's editor."""
    page.mouse.dblclick(*_cell(page, row, column))
    page.wait_for_function(EDITING, timeout=10_000)


def _type_and_enter(page, row: int, column: str, text: str) -> None:
    """Type into a cell of the label editor at a person's pace, once its editor has the focus (a selected cell's
    editor opens on the first key; keys typed while it opens are lost), press Enter once the editor shows the
    text, then wait for the page's rerun with the edit (the validation table changes: every edit here changes
    what the row still lacks)."""
    before = _validation(page)
    typed = ""
    if _cell_state(page, row, column) == "selected":
        typed = text[0]
        page.keyboard.type(typed)  # opens the cell's editor, with this key in it
        page.wait_for_function(EDITING, timeout=10_000)
    page.keyboard.type(text[len(typed):], delay=50)
    try:
        page.wait_for_function(SHOWS, arg=text, timeout=10_000)
    except PlaywrightTimeout:
        shown = page.evaluate("() => document.activeElement && document.activeElement.value")
        pytest.fail(f"The {column} cell's editor shows {shown!r} after typing {text!r}.")
    page.keyboard.press("Enter")
    page.wait_for_function(VALIDATION_CHANGED, arg=[GRID_TABLES, before], timeout=60_000)
    wait_idle(page)


def test_labels_typed_into_the_table_are_stored(browser, app_url, app_home, tmp_path):  # noqa: F811
    named, unnamed = tmp_path / "NOBEL_ACTIVE_4.3mm_91.png", tmp_path / "scan_0001.png"
    added = tmp_path / "ZIMMER_TSV_3.75mm_93.png"
    named.write_bytes(_png(9101))
    unnamed.write_bytes(_png(9102))
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{app_url}/ingest")
    wait_idle(page)
    page.get_by_label("Staff password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.locator("input[type='file']").first.wait_for(state="attached", timeout=60_000)
    page.locator("input[type='file']").first.set_input_files([str(named), str(unnamed)])
    page.get_by_text("1 ready, 0 duplicates, 1 rejected.").wait_for(timeout=120_000)
    wait_idle(page)
    _validation(page)

    # Each edit reruns the page; the next one must find the previous one still there.
    page.mouse.click(*_cell(page, 1, "file"))  # keyboard: select a cell, arrow to the next one, type
    assert _cell_state(page, 1, "file") == "selected"
    page.keyboard.press("ArrowRight")
    _type_and_enter(page, 1, "manufacturer", "neodent")
    page.mouse.dblclick(*_cell(page, 1, "model"))  # mouse: double-click a cell, type
    _type_and_enter(page, 1, "model", "helix")
    _open_editor(page, 1, "diameter_mm")
    _type_and_enter(page, 1, "diameter_mm", "3.75")
    # Every edit survived the reruns between them: the row is now ready.
    page.get_by_text("2 ready, 0 duplicates, 0 rejected.").wait_for(timeout=60_000)
    wait_idle(page)
    # One more file: a new table, which keeps what was typed into the old one.
    added.write_bytes(_png(9103))
    page.locator("input[type='file']").first.set_input_files([str(added)])
    page.get_by_text("3 ready, 0 duplicates, 0 rejected.").wait_for(timeout=120_000)
    # The new table's grids draw after the rerun ends and push the button down a row: a click before that
    # would land where the button was (the likely cause of a click lost in CI, with both cores busy).
    page.wait_for_function("([tables, name]) => { const t = document.querySelectorAll(tables)[1];"
                           " return t && t.textContent.includes(name); }", arg=[GRID_TABLES, added.name],
                           timeout=60_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    page.get_by_role("button", name="Ingest 3 files").click()
    expect_text(page, "Last ingestion", app_home / "app.log")
    wait_idle(page)

    page.goto(f"{app_url}/references")
    wait_idle(page)
    page.get_by_label("Search").fill("scan_0001")
    page.get_by_label("Search").press("Enter")
    page.get_by_text("Neodent HELIX 3.75 mm").first.wait_for(timeout=60_000)
    page.get_by_label("Search").fill("NOBEL_ACTIVE_4.3mm_91")
    page.get_by_label("Search").press("Enter")
    page.get_by_text("Nobel Biocare ACTIVE 4.3 mm").first.wait_for(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()
