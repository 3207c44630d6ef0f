"""The references page: gallery, filters, search, detail with neighbours, and staff-only edit/delete."""

from __future__ import annotations

import re

import pytest

from raiox_dashboard import auth
from raiox_dashboard.widgets import WORD_JOINER
from raiox_core.db import Filters
from raiox_core.errors import NotFound
from raiox_core.images import ImageLimits
from tests.app.conftest import STAFF_PASSWORD, page_test


def _unescaped(markdown: str) -> str:
    """The text Markdown sees once backslash escapes are resolved (where Streamlit looks for bare URLs)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def _plain(markdown: str) -> str:
    return _unescaped(markdown).replace(WORD_JOINER, "")  # what a person reads: md_escape undone


def _shown_ids(at, prefix: str = "ref_show_") -> list[int]:
    return [int(b.key.removeprefix(prefix)) for b in at.button if b.key and b.key.startswith(prefix)]


def _match_caption(at) -> str:
    return next(c.value for c in at.caption if c.value.endswith("references match."))


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(auth, "_sleep", lambda s: None)


@pytest.fixture(scope="module")
def demo() -> list[tuple[str, bytes]]:
    from raiox_core.synthetic import demo_files

    return demo_files(per_diameter=1)[:3]


@pytest.fixture
def few(app_env, db, demo) -> list[int]:
    """Three synthetic references: enough for edit/delete tests, much faster than the whole demo set."""
    from raiox_dashboard import resources
    from raiox_core.ingest import Source, ingest

    report = ingest([Source.from_bytes(n, d) for n, d in demo], db=resources.get_db(), storage=resources.get_storage(),
                    embedder=resources.get_embedder(), source="synthetic", limits=ImageLimits())
    return [item.id for item in report.ingested]


def _meta(at) -> dict:
    """The detail view's Field/Value table."""
    (table,) = [d.value for d in at.dataframe if list(d.value.columns) == ["Field", "Value"]]
    return dict(zip(table["Field"], table["Value"]))


def _sha(at) -> str:
    """The detail's SHA-256, shown whole in a code block (a table cell would cut it off)."""
    (code,) = [c.value for c in at.code if re.fullmatch(r"[0-9a-f]{64}", c.value)]
    return code


def _open(ref_id: int):
    at = page_test("references")
    at.query_params["id"] = str(ref_id)
    return at.run()


def test_gallery_pages_filters_and_search(seeded, db):
    total = db.count()
    at = page_test("references").run()
    assert not at.exception
    assert _match_caption(at) == f"{total} of {total} references match."
    first_page = _shown_ids(at)
    assert len(first_page) == 24 == len(at.image)  # one thumbnail per reference shown
    assert first_page == [r["id"] for r in db.list(limit=24)]
    at.get("pagination")[0].set_value(2).run()
    assert _shown_ids(at) == [r["id"] for r in db.list(limit=24, offset=24)]

    at.selectbox(key="ref_manufacturer").select("Straumann").run()
    straumann = db.list(Filters(manufacturer="Straumann"))
    assert _match_caption(at) == f"{len(straumann)} of {total} references match."
    assert 0 < len(straumann) < total and sorted(_shown_ids(at)) == sorted(r["id"] for r in straumann)
    assert set(at.selectbox(key="ref_model").options) == {"All", "BL", "BLT", "TL"}

    at.selectbox(key="ref_model").select("TL").run()
    assert sorted(_shown_ids(at)) == sorted(r["id"] for r in db.list(Filters(manufacturer="Straumann", model="TL")))

    # Another manufacturer: the model filter starts again from "All" (TL is not a Neodent model).
    at.selectbox(key="ref_manufacturer").select("Neodent").run()
    assert not at.exception and at.selectbox(key="ref_model").value == "All"
    assert sorted(_shown_ids(at)) == sorted(r["id"] for r in db.list(Filters(manufacturer="Neodent")))

    at.selectbox(key="ref_manufacturer").select("All").run()
    at.slider(key="ref_diameter").set_range(4.0, 4.5).run()
    narrow = db.list(Filters(diameter_min=4.0, diameter_max=4.5))
    assert narrow and all(4.0 <= r["diameter_mm"] <= 4.5 for r in narrow)
    assert sorted(_shown_ids(at)) == sorted(r["id"] for r in narrow)

    at.slider(key="ref_diameter").set_range(2.0, 8.0).run()
    at.text_input(key="ref_text").input("helix").run()
    helix = db.list(Filters(text="helix"))
    assert helix and all(r["model"] == "HELIX" for r in helix)
    assert sorted(_shown_ids(at)) == sorted(r["id"] for r in helix)
    assert all("HELIX" in _plain(c.value) for c in at.caption if c.value.startswith("\\#"))

    at.text_input(key="ref_text").input("no such implant").run()
    assert _match_caption(at) == f"0 of {total} references match."
    assert not _shown_ids(at) and "No reference matches" in at.info[0].value
    assert not at.exception


def test_detail_shows_metadata_and_neighbours(seeded, db):
    at = page_test("references").run()
    ref = db.list(Filters(model="HELIX"))[0]
    at.button(key=f"ref_show_{ref['id']}").click().run()
    assert not at.exception
    assert at.query_params["id"] == [str(ref["id"])] or at.query_params["id"] == str(ref["id"])
    meta = _meta(at)
    assert meta["File name"] == ref["source_filename"]
    assert _sha(at) == ref["sha256"] and meta["Source"] == "synthetic"
    assert meta["Manufacturer"] == "Neodent" and meta["Model"] == "HELIX"
    assert any("Synthetic image" in w.value for w in at.warning)  # marked visibly

    from raiox_dashboard import resources

    embedding_model = resources.get_embedder().embedding_model
    expected = [r["id"] for r in db.search(db.vector(ref["id"], embedding_model), embedding_model, k=7) if r["id"] != ref["id"]][:6]
    neighbours = _shown_ids(at, "ref_neighbour_")
    assert neighbours == expected and ref["id"] not in neighbours and len(neighbours) == 6
    assert any("similarity" in c.value for c in at.caption)

    # Following a neighbour opens it.
    at.button(key=f"ref_neighbour_{neighbours[0]}").click().run()
    assert _sha(at) == db.get(neighbours[0])["sha256"]
    at.button(key="ref_close").click().run()
    assert not at.dataframe and not _shown_ids(at, "ref_neighbour_")


def test_anonymous_cannot_edit_or_delete(few, db):
    ref_id = few[0]
    at = _open(ref_id)
    assert not at.exception
    assert at.text_input(key="references_password")  # the sign-in form stands where the tools would be
    assert not [b for b in at.button if b.key and b.key.startswith("delete_")]
    assert not at.checkbox and not [t for t in at.text_input if t.key.startswith("relabel_")]
    at.text_input(key="references_password").input("not the password")
    at.button[[b.label for b in at.button].index("Sign in")].click().run()
    assert "Wrong staff password" in at.error[0].value
    assert not [b for b in at.button if b.key and b.key.startswith("delete_")]
    assert db.get(ref_id)["model"] == "REPLACE"


def _sign_in(at):
    at.text_input(key="references_password").input(STAFF_PASSWORD)
    at.button[[b.label for b in at.button].index("Sign in")].click()
    return at.run()


def test_staff_relabels_and_deletes(few, db):
    from raiox_dashboard import resources

    ref = db.get(few[0])
    storage = resources.get_storage()
    assert storage.exists(ref["object_key"])
    total = db.count()
    at = _sign_in(_open(ref["id"]))
    assert not at.exception and not at.error
    rid = ref["id"]

    # An empty model is refused with a sentence; nothing changes.
    at.text_input(key=f"relabel_{rid}_model").input("  ")
    at.button[[b.label for b in at.button].index("Save labels")].click().run()
    assert "must not be empty" in at.error[0].value
    assert db.get(rid)["model"] == ref["model"]

    at.text_input(key=f"relabel_{rid}_manufacturer").input("straumann")
    at.text_input(key=f"relabel_{rid}_model").input("bl")
    at.number_input(key=f"relabel_{rid}_diameter").set_value(4.1)
    at.button[[b.label for b in at.button].index("Save labels")].click().run()
    assert not at.exception and not at.error
    row = db.get(rid)
    assert (row["manufacturer"], row["model"], row["diameter_mm"]) == ("Straumann", "BL", pytest.approx(4.1))
    assert any(f"#{rid} relabelled" in s.value for s in at.success)
    assert at.text_input(key=f"relabel_{rid}_manufacturer").value == "Straumann"  # the form shows what was stored
    # The caches were cleared: the gallery shows the new labels straight away.
    assert any(_plain(c.value).startswith(f"#{rid} Straumann BL 4.1 mm") for c in at.caption)

    # Delete needs the confirmation first.
    delete = at.button(key=f"delete_{rid}")
    assert delete.disabled
    at.checkbox(key=f"delete_confirm_{rid}").check().run()
    assert not at.button(key=f"delete_{rid}").disabled
    at.button(key=f"delete_{rid}").click().run()
    assert not at.exception
    with pytest.raises(NotFound):
        db.get(rid)
    assert not storage.exists(ref["object_key"])  # the stored image is gone too
    assert db.count() == total - 1
    assert any(f"#{rid} deleted" in s.value for s in at.success)
    assert _match_caption(at) == f"{total - 1} of {total - 1} references match."
    assert rid not in _shown_ids(at) and not at.dataframe  # detail closed


def test_labels_are_rendered_as_text(app_env, db, demo):
    from raiox_dashboard import resources
    from raiox_core.ingest import LabelOverride, Source, ingest

    name, data = demo[0]
    evil = "[click](https://evil.example) <img src=x onerror=alert(1)> **bold** :red[x] www.evil.example a@evil.example"
    report = ingest([Source.from_bytes("scan.png", data, LabelOverride(evil, "M1", 4.0))],
                    db=resources.get_db(), storage=resources.get_storage(), embedder=resources.get_embedder(), limits=ImageLimits())
    rid = report.ingested[0].id
    at = _open(rid)
    assert not at.exception
    captions = [c.value for c in at.caption if c.value.startswith("\\#")]
    # Every markup character of the label is backslash-escaped: markdown shows it as typed.
    assert captions and all(re.search(r"(?<!\\)[\[\]()<>*:]", c) is None for c in captions)
    # Nothing Markdown would turn into a link by itself: a bare URL, a www. name, an e-mail address.
    assert all(re.search(r"https?://|www\.|\w@", _unescaped(c), re.I) is None for c in captions)
    assert _plain(captions[0]).startswith(f"#{rid} {evil} M1 4 mm")
    assert all(not m.allow_html for m in at.markdown)
    assert any(t.value.startswith(evil) for t in at.text)  # the detail's plain-text label


@pytest.mark.parametrize("wanted", ["\u00b2", "abc", "-1", "0", "1e3", "9" * 30])
def test_an_id_that_is_not_a_reference_number_is_one_sentence(few, wanted):
    at = page_test("references")
    at.query_params["id"] = wanted
    at.run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "a reference id is a positive whole number such as ?id=12" in error and "Traceback" not in error
    assert set(_shown_ids(at)) == set(few)  # the gallery still shows
