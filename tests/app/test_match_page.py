"""pages/match.py through AppTest: upload, result cards, refusals, confidence states, reruns, feedback, downloads."""

from __future__ import annotations

import csv
import io
import re
import json

import pytest

from raiox_core.images import ImageLimits, prepare_image
from raiox_core.match import percent
from tests.app.conftest import page_test

# A name that could identify a patient: it must never reach the database or the downloads.
PATIENT_NAME = "maria_da_silva_2024-03-01.png"


@pytest.fixture(scope="module")
def demo():
    """The same bytes the `seeded` fixture ingests: (file name, PNG bytes)."""
    from raiox_core.synthetic import demo_files

    return demo_files(per_diameter=1)


@pytest.fixture
def few_references(app_env, demo):
    """Three synthetic references of three manufacturers: enough for tests that need any result (~10x faster)."""
    from raiox_dashboard import resources
    from raiox_core.ingest import Source, ingest

    chosen = [demo[0], demo[8], demo[-1]]  # Nobel REPLACE 3.5, Straumann BL 4.8, Zimmer TSX 4.7
    report = ingest([Source.from_bytes(n, d) for n, d in chosen], db=resources.get_db(),
                    storage=resources.get_storage(), embedder=resources.get_embedder(), source="synthetic", limits=ImageLimits())
    assert len(report.ingested) == 3
    return chosen




def near_copy(data: bytes) -> bytes:
    """The same radiograph with one pixel changed: as similar as can be, but not the stored image itself."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("L")
    image.putpixel((image.width // 2, image.height // 2), 255 - image.getpixel((image.width // 2, image.height // 2)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def threshold(monkeypatch, value: str) -> None:
    from raiox_dashboard import resources

    monkeypatch.setenv("RAIOX_MATCH_THRESHOLD", value)
    resources.get_settings.clear()


def upload(name: str, data: bytes, mime: str = "image/png"):
    at = page_test("match").run()
    assert not at.exception
    at.file_uploader(key="match_upload").upload(name, data, mime)
    return at.run()


def texts(elements) -> list[str]:
    """What the user reads: the element's markdown with its backslash escapes resolved."""
    return [plain(e.value) for e in elements]


def plain(markdown: str) -> str:
    """Backslash escapes resolved, word joiners (which keep URLs and shortcodes inert) removed."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


def similarities(at) -> list[float]:
    return [float(m.value.rstrip("%")) for m in at.metric if m.label == "Similarity"]


def log_rows(db) -> list[dict]:
    from psycopg.rows import dict_row

    with db.connection() as conn:
        return conn.cursor(row_factory=dict_row).execute("SELECT * FROM match_log ORDER BY id").fetchall()


def result_of(at):
    return at.session_state["match_result"][1]


def test_exact_reference_comes_first_with_cards_votes_and_compare(seeded, demo, db, downloads):
    name, data = demo[0]  # NOBEL_REPLACE_3.5mm_01.png
    at = upload(PATIENT_NAME, data)
    assert not at.exception and not at.error

    # Three cards (k defaults to 3), the exact reference first at ~100%, each marked synthetic.
    scores = similarities(at)
    assert len(scores) == 3 and scores[0] >= 99.0 and scores == sorted(scores, reverse=True)
    cards = [m for m in texts(at.markdown) if m.startswith("**")]
    assert cards[0] == "**1. Nobel Biocare REPLACE**  \nØ 3.5 mm"
    assert texts(at.markdown).count(":orange-background[Synthetic reference]") == 3
    assert result_of(at).matches[0].source_filename == name
    exact_id = result_of(at).exact.id
    assert texts(at.success)[0].startswith(f"This exact image is reference #{exact_id}: Nobel Biocare REPLACE 3.5 mm.")

    # Untrained weights: the page says so itself, even outside the app's sidebar.
    assert any("Untrained model weights" in w and "RAIOX_PRETRAINED=none is set" in w for w in texts(at.warning))
    # The normalised query is shown, the two vote charts and the difference heat map are drawn.
    captions = [c for image in at.image for c in image.captions]
    assert captions[0] == "What the model sees (normalised)"
    assert len(at.image) == 1 + 3 + 2  # query, three thumbnails, the compared pair
    assert captions[-2:] == ["Query", "Nobel Biocare REPLACE Ø 3.5 mm"]
    assert len(at.get("plotly_chart")) == 3
    # The first match is compared by default: the same pixels, so SSIM 1.
    assert [m.value for m in at.metric if m.label == "SSIM"] == ["1.000"]

    # One request logged: the hash of the normalised image, never the uploaded file's name.
    rows = log_rows(db)
    assert len(rows) == 1
    assert rows[0]["query_sha256"] == prepare_image(data, limits=ImageLimits()).sha256
    assert PATIENT_NAME not in json.dumps(rows[0], default=str)

    # Downloads: one CSV row per match, the JSON in MatchResult.to_json's shape, no file name.
    table = list(csv.DictReader(io.StringIO(downloads["raiox-match.csv"].decode())))
    assert [r["rank"] for r in table] == ["1", "2", "3"]
    assert (table[0]["manufacturer"], table[0]["model"], float(table[0]["diameter_mm"])) == ("Nobel Biocare", "REPLACE", 3.5)
    assert float(table[0]["similarity"]) >= 0.99
    payload = json.loads(downloads["raiox-match.json"])
    assert payload == result_of(at).to_json()
    assert payload["file"] == "" and PATIENT_NAME not in downloads["raiox-match.json"].decode()


def test_a_file_without_extension_is_accepted(few_references):
    # DICOM files often have no extension: the uploader takes any name and the core sniffs the bytes.
    at = upload("IMG0001", few_references[1][1], "application/octet-stream")
    assert not at.exception and not at.error
    assert similarities(at)[0] >= 99.0


def test_a_refused_upload_shows_the_reason_and_nothing_else(few_references, db):
    at = page_test("match").run()
    for name, data, reason in [
        ("notes.png", b"hello", "The file looks like a plain-text file, not an image."),
        ("page.html", b"<!DOCTYPE html><html><body>x</body></html>", "The file looks like an HTML document, not an image."),
        ("empty.jpg", b"", "The file is empty."),
        ("big.png", (few_references[0][1] + bytes(21 * 2**20))[:21 * 2**20], "The file is 21.0 MB; the limit is 20 MB."),
    ]:
        at.file_uploader(key="match_upload").set_value((name, data, "text/plain"))
        at.run()
        assert not at.exception
        assert texts(at.error) == [reason]
        assert not similarities(at) and not at.get("plotly_chart")
    assert log_rows(db) == []


def test_an_image_below_the_threshold_is_no_confident_match(seeded, demo, monkeypatch):
    threshold(monkeypatch, "1.0")
    at = upload("query.png", near_copy(demo[0][1]))
    assert not at.exception
    warning = [w for w in texts(at.warning) if "No confident match" in w]
    assert len(warning) == 1 and "below the 100% needed" in warning[0]
    assert not at.success
    assert result_of(at).confident is False
    assert similarities(at)[0] >= 99.0  # the candidates are still shown to compare by eye


def test_a_confident_match_states_the_leading_answer(seeded, demo, monkeypatch):
    threshold(monkeypatch, "0.0")
    at = upload("query.png", near_copy(demo[0][1]))
    assert not at.exception
    result = result_of(at)
    assert result.confident and result.exact is None
    assert texts(at.success) == [
        f"Leading answer: {result.answer} ({percent(result.confidence)} of the vote for "
        f"{result.manufacturer_vote[0].label})."
    ]
    assert not any("No confident match" in w for w in texts(at.warning))


def test_under_a_manufacturer_filter_the_confidence_is_the_models_share(seeded, demo, monkeypatch):
    threshold(monkeypatch, "0.99")
    at = upload("query.png", near_copy(demo[0][1]))
    at.selectbox(key=f"match_compare_{result_of(at).log_id}").select(1)  # compare the second match...
    at.run()
    at.selectbox(key="match_manufacturer").select("Nobel Biocare")
    at.run()
    assert not at.exception
    result = result_of(at)
    compare = at.selectbox(key=f"match_compare_{result.log_id}")  # ...then a new result starts at its first
    assert compare.value == 0 and at.image[-1].captions[0].startswith(result.matches[0].label)
    assert result.restricted_to == "Nobel Biocare" and result.confidence_of == "model"
    assert result.manufacturer_vote[0].probability == pytest.approx(1.0)
    assert result.confidence == pytest.approx(result.model_vote[0].probability)
    shown = texts(at.success) + texts(at.warning)
    assert any("restricted to Nobel Biocare" in t and "among Nobel Biocare's models" in t for t in shown)
    assert any(c.value.startswith("Restricted to Nobel Biocare") for c in at.caption)
    assert len(at.get("plotly_chart")) == 2  # the model vote and the difference map: no 100% manufacturer bar


def test_an_exact_copy_outside_the_filter_says_so(seeded, demo):
    at = upload("query.png", demo[0][1])  # a Nobel Biocare reference, byte for byte
    at.selectbox(key="match_manufacturer").select("Straumann")
    at.run()
    assert not at.exception
    exact = result_of(at).exact
    assert texts(at.success)[0].endswith("It is not among the references below: the search was restricted to "
                                         "Straumann.")
    assert not any(c.value.startswith("Restricted to") for c in at.caption)  # the confidence is not a vote's
    assert plain(at.radio(key="match_verdict").label) == f"The answer, reference #{exact.id} (Nobel Biocare REPLACE), is"


def test_a_refused_upload_hides_the_rotate_and_crop_controls(few_references):
    at = upload("notes.png", b"hello", "text/plain")
    assert texts(at.error) == ["The file looks like a plain-text file, not an image."]
    assert not at.radio and not at.slider


def test_reruns_reuse_the_result_until_the_query_or_search_changes(seeded, demo, db):
    at = upload("query.png", demo[0][1])
    assert len(log_rows(db)) == 1

    # Choosing another match to compare reruns the script but not the model.
    at.selectbox(key=f"match_compare_{result_of(at).log_id}").set_value(1).run()
    assert not at.exception and len(log_rows(db)) == 1
    (ssim,) = [float(m.value) for m in at.metric if m.label == "SSIM"]
    assert ssim < 1.0

    # k and the manufacturer filter are part of the search: a new request each.
    at.slider(key="match_k").set_value(5).run()
    assert len(similarities(at)) == 5 and len(log_rows(db)) == 2
    at.selectbox(key="match_manufacturer").set_value("Straumann").run()
    assert not at.exception and len(log_rows(db)) == 3
    assert {m.manufacturer for m in result_of(at).matches} == {"Straumann"}
    assert log_rows(db)[-1]["filters"] == {"manufacturer": "Straumann"}


def test_rotation_and_crop_change_what_the_model_sees(seeded, demo, db):
    data = demo[0][1]
    at = upload("query.png", data)
    at.radio(key="match_rotate").set_value(90).run()
    at.slider(key="match_crop_x").set_value((20, 80)).run()
    assert not at.exception and not at.error
    rows = log_rows(db)
    assert len(rows) == 3 and len({r["query_sha256"] for r in rows}) == 3
    assert result_of(at).query.sha256 == rows[-1]["query_sha256"] != prepare_image(data, limits=ImageLimits()).sha256
    # A crop that keeps almost nothing is refused with a sentence, not a traceback.
    at.slider(key="match_crop_y").set_value((50, 52)).run()
    assert not at.exception
    # 60% x 2% of the 384 px demo image.
    assert texts(at.error) == ["The crop keeps 230x8 pixels; keep at least 32 pixels on each side."]


def test_feedback_is_saved_to_the_match_log(few_references, db):
    at = upload("query.png", few_references[0][1])
    log_id = result_of(at).log_id

    # Submitting without a verdict asks for one and saves nothing.
    at.form_submit_button[0].click().run()
    assert "Choose correct or wrong first." in texts(at.warning)
    assert db.match_log(log_id)["feedback"] is None

    at.radio(key="match_verdict").set_value("wrong")
    at.text_input(key="match_right_answer").input("  Straumann BLT 4.1  ")
    at.form_submit_button[0].click().run()
    assert not at.exception
    assert texts(at.success)[-1] == f"Thank you: your feedback on match #{log_id} is saved."
    row = db.match_log(log_id)
    assert (row["feedback"], row["feedback_label"]) == ("wrong", "Straumann BLT 4.1")
    assert len(log_rows(db)) == 1  # the feedback rerun did not run the model again

    # Removing the upload forgets the X-ray and its result in the session as well.
    at.file_uploader(key="match_upload").clear().run()
    assert not at.exception and not similarities(at)
    assert "match_original" not in at.session_state and "match_result" not in at.session_state


def test_an_empty_database_says_how_to_add_references(app_env):
    at = page_test("match").run()
    assert not at.exception
    (info,) = texts(at.info)
    assert "Ingest" in info and "raiox demo" in info
    assert not at.file_uploader  # the page stops before asking for an X-ray
    assert any("Untrained model weights" in w and "RAIOX_PRETRAINED=none is set" in w for w in texts(at.warning))
