"""The ingest page: staff gate, upload -> validated, editable table -> ingestion with a report."""

from __future__ import annotations

import io
import zipfile

import pytest

from raiox_dashboard import auth
from raiox_core.synthetic import demo_files
from tests.app.conftest import STAFF_PASSWORD, page_test

BAD = ("notes.txt", b"this is not an X-ray, just some text\n", "text/plain")


@pytest.fixture(scope="module")
def images() -> list[tuple[str, bytes]]:
    return demo_files(per_diameter=1)[:3]


@pytest.fixture
def delays(monkeypatch):
    waited: list[float] = []
    monkeypatch.setattr(auth, "_sleep", waited.append)
    return waited


def _sign_in(at, password: str = STAFF_PASSWORD):
    at.text_input(key="ingest_password").input(password)
    at.button[[b.label for b in at.button].index("Sign in")].click()
    return at.run()


def _staff_page():
    at = _sign_in(page_test("ingest").run())
    assert not at.exception and not at.error
    return at


def _upload(at, files):
    at.file_uploader[0].set_value([(n, d, m) for n, d, m in files]).run()
    assert not at.exception
    return at


def _table(at) -> dict[str, str]:
    """File -> verdict, from the read-only validation table (the last table; a report may come first)."""
    table = at.dataframe[-1].value
    return dict(zip(table["file"], table["status"]))


def _png(name_data):
    return (name_data[0], name_data[1], "image/png")


def test_anonymous_sees_the_gate_and_cannot_ingest(app_env, db):
    at = page_test("ingest").run()
    assert not at.exception
    assert at.text_input(key="ingest_password").proto.type == 1  # a password field
    assert not at.file_uploader and not at.data_editor
    assert not [b for b in at.button if b.key == "ingest_go"]
    assert db.count() == 0


def test_wrong_password_is_refused_and_slowed(app_env, db, delays):
    at = page_test("ingest").run()
    _sign_in(at, "guess one")
    assert "Wrong staff password" in at.error[0].value
    assert not at.file_uploader
    _sign_in(at, "guess two")
    assert not at.file_uploader
    assert delays == [auth.failure_delay(1), auth.failure_delay(2)] and 0 < delays[0] < delays[1]
    _sign_in(at, STAFF_PASSWORD)
    assert at.file_uploader and not at.error


def test_staff_validates_corrects_and_ingests(app_env, db, images, monkeypatch):
    from raiox_dashboard import resources
    import raiox_core.ingest as core_ingest

    stages = []
    real_ingest = core_ingest.ingest

    def recording_ingest(sources, **kwargs):
        given = kwargs["progress"]
        kwargs["progress"] = lambda done, total, stage: (stages.append((done, total, stage)), given(done, total, stage))
        return real_ingest(sources, **kwargs)

    monkeypatch.setattr(core_ingest, "ingest", recording_ingest)
    (name1, png1), (name2, png2) = images[:2]
    at = _upload(_staff_page(), [_png(images[0]), _png(images[1]), BAD])
    statuses = _table(at)
    assert statuses[name1] == "ok" and statuses[name2] == "ok"
    assert statuses["notes.txt"].startswith("rejected: The file looks like a plain-text file")
    table = at.data_editor[0].value
    first = table[table["file"] == name1].iloc[0]
    assert (first["manufacturer"], first["model"], first["diameter_mm"]) == ("Nobel Biocare", "REPLACE", 3.5)
    assert [b.label for b in at.button if b.key == "ingest_go"] == ["Ingest 2 files"]

    # Staff correct a label in the table; the override is what gets stored.
    at.session_state[at.data_editor[0].key] = {"edited_rows": {0: {"model": "custom"}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert _table(at)[name1] == "ok"
    at.button(key="ingest_go").click().run()
    assert not at.exception and not at.error

    rows = {r["source_filename"]: r for r in db.list()}
    assert set(rows) == {name1, name2} and db.count() == 2
    assert rows[name1]["model"] == "CUSTOM" and rows[name2]["model"] == "REPLACE"
    assert all(r["source"] == "upload" for r in rows.values())
    storage = resources.get_storage()
    assert all(storage.exists(r["object_key"]) for r in rows.values())
    assert [m.value for m in at.metric] == ["2", "0", "1"]
    report = at.dataframe[0].value
    assert dict(zip(report["file"], report["status"])) == {name1: "ingested", name2: "ingested", "notes.txt": "rejected"}
    assert {int(i) for i in report[report["status"] == "ingested"]["id"]} == {r["id"] for r in rows.values()}
    assert {s for _, _, s in stages} >= {"embedding", "storing", "done"} and stages[-1] == (3, 3, "done")
    assert not at.data_editor  # the uploader starts empty again

    # The same files again: the table says duplicate, with the stored ids, and nothing is ready.
    at = _upload(at, [_png(images[0]), _png(images[1])])
    statuses = _table(at)
    assert statuses == {name1: f"duplicate of #{rows[name1]['id']}", name2: f"duplicate of #{rows[name2]['id']}"}
    assert at.button(key="ingest_go").disabled and at.button(key="ingest_go").label == "Ingest 0 files"


def test_unconventional_names_need_labels(app_env, db, images):
    data = images[2][1]
    at = _upload(_staff_page(), [("scan_0001.png", data, "image/png"), ("copy.png", data, "image/png")])
    statuses = _table(at)
    assert statuses["scan_0001.png"].startswith("rejected: The name 'scan_0001.png' does not follow")
    table = at.data_editor[0].value
    assert table["manufacturer"].tolist() == ["", ""] and table["diameter_mm"].isna().all()
    edits = {i: {"manufacturer": "neodent", "model": "helix", "diameter_mm": 4.3} for i in (0, 1)}
    at.session_state[at.data_editor[0].key] = {"edited_rows": edits, "added_rows": [], "deleted_rows": []}
    at.run()
    assert _table(at) == {"scan_0001.png": "ok", "copy.png": "duplicate of scan_0001.png"}
    at.button(key="ingest_go").click().run()
    (row,) = db.list()
    assert (row["manufacturer"], row["model"], row["diameter_mm"]) == ("Neodent", "HELIX", pytest.approx(4.3))
    report = at.dataframe[0].value
    assert dict(zip(report["file"], report["status"])) == {"scan_0001.png": "ingested", "copy.png": "duplicate"}


def test_zip_upload_is_expanded_with_the_archive_rules(app_env, db, images):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr(f"batch/{images[0][0]}", images[0][1])
        archive.writestr(images[1][0], images[1][1])
        archive.writestr("../escape.png", images[2][1])
        archive.writestr("readme.txt", b"hello")
    at = _upload(_staff_page(), [("batch.zip", buf.getvalue(), "application/zip"), ("broken.zip", b"PK\x03\x04nope", "application/zip")])
    statuses = _table(at)
    assert statuses[f"batch.zip:batch/{images[0][0]}"] == "ok"
    assert statuses[f"batch.zip:{images[1][0]}"] == "ok"
    assert statuses["batch.zip:../escape.png"].startswith("rejected: The archive entry has an absolute or '..' path")
    assert statuses["batch.zip:readme.txt"].startswith("rejected:")
    assert statuses["broken.zip"] == "rejected: broken.zip is not a readable zip archive."
    at.button(key="ingest_go").click().run()
    assert sorted(r["source_filename"] for r in db.list()) == sorted([images[0][0], images[1][0]])
    assert [m.value for m in at.metric] == ["2", "0", "3"]


def test_a_copy_under_a_bad_name_is_a_duplicate_and_counts_come_from_the_verdicts(app_env, db, images):
    name, data = images[0]
    at = _upload(_staff_page(), [_png(images[0])])
    at.button(key="ingest_go").click().run()
    (row,) = db.list()
    tiny = io.BytesIO()
    from PIL import Image

    Image.new("L", (20, 20), 90).save(tiny, format="PNG")
    at = _upload(at, [("copy.png", data, "image/png"), ("scan.png", tiny.getvalue(), "image/png"), BAD])
    statuses = _table(at)
    assert statuses["copy.png"] == f"duplicate of #{row['id']}"
    assert statuses["scan.png"].startswith("rejected: The image is 20x20 pixels; each side must be at least 32 pixels. "
                                           "The name 'scan.png' does not follow")
    assert at.caption[-1].value == "0 ready, 1 duplicates, 2 rejected."


def test_a_diameter_with_two_decimals_is_kept(app_env, db, images):
    at = _upload(_staff_page(), [("NOBEL_ACTIVE_3.75mm_01.png", images[0][1], "image/png")])
    assert at.data_editor[0].value["diameter_mm"].tolist() == [3.75]
    assert at.data_editor[0].proto.columns  # the column config is sent
    import json

    config = json.loads(at.data_editor[0].proto.columns)["diameter_mm"]["type_config"]
    assert config.get("step") == 0.01 and "format" not in config  # a step of 0.1 shows 3.75 as 3.70
