"""pages/explorer.py through AppTest: the map (PCA and one UMAP), picking, query placement, quality tables."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app.conftest import page_test
from raiox_core.images import ImageLimits


def manufacturers(report) -> set[str]:
    """The canonical names the seeded demo set was stored under (Nobel Biocare, Straumann, ...)."""
    found = {item.manufacturer for item in report.ingested}
    assert len(found) == 4
    return found


@pytest.fixture(scope="module", autouse=True)
def numba_cache():
    from raiox_core.numba_cache import configure_numba_cache

    configure_numba_cache()  # what app/main.py does before any page runs; these tests run the page alone


@pytest.fixture(autouse=True)
def fresh_projection_memory():
    # The disk cache lives in each test's own data dir; the in-process layer must not leak across tests.
    from raiox_core import projection_cache

    projection_cache.clear_memory_cache()
    yield
    projection_cache.clear_memory_cache()




def explorer(method="PCA", three_d=False, timeout=120):
    at = page_test("explorer", timeout=timeout)
    at.session_state["explorer_method"] = method
    at.session_state["explorer_3d"] = three_d
    return at.run()


def figure(at) -> dict:
    charts = at.get("plotly_chart")
    assert charts, "no plotly chart rendered"
    return json.loads(charts[0].proto.spec)


def values(array) -> np.ndarray:
    """A plotly JSON array: plain lists, or plotly 6's {"dtype", "bdata"[, "shape"]} base64 encoding."""
    if isinstance(array, dict) and "bdata" in array:
        out = np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
        shape = array.get("shape")
        return out.reshape([int(d) for d in str(shape).split(",")]) if shape else out
    return np.asarray(array)


def captions(at) -> str:
    return "\n".join(c.value for c in at.caption)


def quality_table(at):
    for frame in at.dataframe:
        df = frame.value
        if {"manufacturer", "silhouette", "top1"} <= set(df.columns):
            return df
    raise AssertionError("no cluster quality table")


def test_empty_database_explains_how_to_add_references(app_env):
    at = page_test("explorer").run()
    assert not at.exception
    assert at.info and "at least 5 references" in at.info[0].value
    assert not at.get("plotly_chart")


def test_pca_map_quality_table_download_and_cache(seeded, downloads):
    at = explorer("PCA")
    assert not at.exception, at.exception
    assert at.status and "computed" in at.status[0].label  # the progress box appears only when computing
    assert "loaded from cache" not in captions(at)
    spec = figure(at)
    traces = spec["data"]
    assert {t["type"] for t in traces} <= {"scatter", "scattergl"}
    assert {t["legendgroup"].split(",")[0].strip() for t in traces} == manufacturers(seeded)  # colour = manufacturer
    points = sum(len(values(t["x"])) for t in traces)
    assert points == len(seeded.ingested)
    # Hover names the reference; customdata carries its id for the selection.
    first = traces[0]
    assert "diameter" in first["hovertemplate"] and "file" in first["hovertemplate"]
    ids = {int(row[0]) for t in traces for row in values(t["customdata"])}
    assert ids == {r.id for r in seeded.ingested}

    table = quality_table(at)
    assert set(table["manufacturer"]) == manufacturers(seeded)
    assert table["references"].sum() == len(seeded.ingested)
    assert "PCA" in captions(at)
    assert len(at.get("plotly_chart")) == 3  # the map and two confusion heat maps

    (name,) = [n for n in downloads if n.endswith(".csv")]
    rows = list(csv.DictReader(io.StringIO(downloads[name].decode())))
    assert list(rows[0]) == ["id", "manufacturer", "model", "diameter", "x", "y"]
    assert {int(r["id"]) for r in rows} == ids

    at.run()  # a rerun (any widget change) reuses the map
    assert not at.exception and not at.status and "loaded from cache" in captions(at)


def test_3d_toggle_and_picking_a_reference_shows_its_thumbnail(seeded):
    at = explorer("PCA", three_d=True)
    assert not at.exception
    assert {t["type"] for t in figure(at)["data"]} == {"scatter3d"}
    target = seeded.ingested[3]
    at.selectbox(key="explorer_pick").set_value(target.id).run()
    assert not at.exception
    images = at.get("image")
    assert images, "no thumbnail shown"
    assert target.file in re.sub(r"\\(.)", r"\1", images[0].proto.imgs[0].caption)  # the caption is escaped


def test_uploaded_query_is_placed_on_the_map_with_its_neighbours(seeded):
    from raiox_core.synthetic import demo_files

    name, data = demo_files(per_diameter=1)[0]
    at = explorer("PCA")
    at.file_uploader(key="explorer_query").upload("query.png", data, "image/png")
    at.slider(key="explorer_k").set_value(3)
    at.run()
    assert not at.exception, at.exception
    traces = {t.get("name"): t for t in figure(at)["data"]}
    assert "query" in traces and "query's neighbours" in traces
    assert len(values(traces["query's neighbours"]["x"])) == 3
    neighbours = [f.value for f in at.dataframe if "similarity" in f.value.columns][0]
    # The query is a stored reference's own image: it is its own nearest neighbour, at similarity 1.
    assert neighbours["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-3)
    assert neighbours["id"].iloc[0] == seeded.ingested[0].id

    # Something that is not an image: one error sentence, and the map is still there.
    at.file_uploader(key="explorer_query").set_value(("notes.txt", b"hello, not an image", "text/plain"))
    at.run()
    assert not at.exception and at.error
    assert "query" not in {t.get("name") for t in figure(at)["data"]}


def test_umap_shows_the_pca_preview_with_progress_then_the_map(seeded, monkeypatch):
    """The first run shows a PCA at once with the background fit's progress; a run after the fit shows
    UMAP, without the bar. The fit is held until the first run has been read: with umap already compiled in
    this process (another test file ran it first) a 26-point fit can end before the script run does."""
    import threading

    from raiox_core import projection_cache, projection_jobs

    real, release = projection_cache.project, threading.Event()

    def held(x, **kwargs):
        if kwargs["method"] == "umap":
            assert release.wait(timeout=300)
        return real(x, **kwargs)

    monkeypatch.setattr(projection_cache, "project", held)
    try:
        at = explorer("UMAP")
        assert not at.exception, at.exception
        assert "PCA" in captions(at) and "UMAP map of" in captions(at) and "being computed in the background" in captions(at)
        assert at.get("progress"), "no progress bar while UMAP is computed"
    finally:
        release.set()
    assert sum(len(values(t["x"])) for t in figure(at)["data"]) == len(seeded.ingested)  # the preview: every point
    assert set(quality_table(at)["manufacturer"]) == manufacturers(seeded)  # the tables do not wait for UMAP
    keys = list(projection_jobs._jobs)
    assert len(keys) == 1 and projection_jobs.wait(keys[0], timeout=300)
    at.run()
    assert not at.exception, at.exception
    assert "UMAP" in captions(at) and "n_neighbors=15" in captions(at)
    assert "being computed" not in captions(at) and not at.get("progress")  # the bar went with the preview
    assert sum(len(values(t["x"])) for t in figure(at)["data"]) == len(seeded.ingested)
    assert "Showing" not in captions(at) and "sample" not in captions(at)  # a small set: every point, no sample
    at.run()
    assert not at.exception and "loaded from cache" in captions(at)


def test_a_failed_umap_says_why_keeps_the_pca_map_and_try_again_fits_it_anew(seeded, monkeypatch):
    """A fit that fails is shown once with its reason (polling does not start it again) until the user asks."""
    from raiox_core import projection_cache, projection_jobs

    real, calls = projection_cache.project, []  # the UMAP fits (the PCA preview goes through project too)

    def fails_once(x, **kwargs):
        if kwargs["method"] != "umap":
            return real(x, **kwargs)
        calls.append(kwargs["method"])
        if len(calls) == 1:
            raise MemoryError("out of memory (test)")
        return real(x, **{**kwargs, "method": "pca"})  # a quick stand-in fit: UMAP itself is tested above

    monkeypatch.setattr(projection_cache, "project", fails_once)
    try:
        at = explorer("UMAP")
        (key,) = list(projection_jobs._jobs)
        assert projection_jobs.wait(key, timeout=60)
        for _ in range(2):  # the page's own polling reruns
            at.run()
            assert not at.exception, at.exception
            assert [e.value for e in at.error] == [
                "The UMAP map could not be computed: out of memory (test) The PCA map is shown instead."]
            assert "PCA" in captions(at) and sum(len(values(t["x"])) for t in figure(at)["data"]) == len(seeded.ingested)
        assert calls == ["umap"]
        at.button(key="explorer_umap_retry").click().run()
        assert not at.exception, at.exception
        assert projection_jobs.wait(key, timeout=60)
        at.run()
        assert not at.exception and not at.error and calls == ["umap", "umap"]
        assert not [b for b in at.button if b.key == "explorer_umap_retry"]
        assert "being computed" not in captions(at)
    finally:
        projection_jobs.forget_jobs()


def test_above_the_caps_the_map_and_the_tables_use_a_stratified_sample_and_say_so(seeded):
    """The caps lowered to a few points (the seeded set is small): what a 100k set gets."""
    # The caps are constants of the page script, which AppTest runs as text: the same script with lower ones.
    source = (Path(__file__).resolve().parents[2] / "pages" / "explorer.py").read_text()
    assert "MAX_POINTS = 20_000" in source and "MAX_EVALUATED = 10_000" in source
    at = AppTest.from_string(source.replace("MAX_POINTS = 20_000", "MAX_POINTS = 20")
                             .replace("MAX_EVALUATED = 10_000", "MAX_EVALUATED = 16"), default_timeout=120)
    at.session_state["explorer_method"] = "PCA"
    at.run()
    assert not at.exception, at.exception
    total = len(seeded.ingested)
    traces = figure(at)["data"]
    shown = [int(row[0]) for t in traces for row in values(t["customdata"])]
    assert len(shown) <= 20 < total and len(set(shown)) == len(shown)
    labels = {(r.manufacturer, r.model) for r in seeded.ingested}
    by_id = {r.id: (r.manufacturer, r.model) for r in seeded.ingested}
    assert {by_id[i] for i in shown} == labels  # every model is still on the map
    assert f"Showing {len(shown)} of {total} references on the map, sampled per model" in captions(at)
    table = quality_table(at)
    assert table["references"].sum() <= 16
    assert f"Computed on a sample of {table['references'].sum()} of {total} references" in captions(at)


# The 3-D glyphs that draw as solid shapes ("cross" and "x" come out as thin bars); 2-D has them all too.
SOLID_SYMBOLS = {"circle", "circle-open", "diamond", "diamond-open", "square", "square-open"}


def _markers(at) -> tuple[dict, dict]:
    """(legend name -> (colour, symbol) of every reference trace, the query trace's marker)."""
    traces = figure(at)["data"]
    refs = {t["name"]: (t["marker"]["color"], t["marker"]["symbol"]) for t in traces if t.get("customdata") is not None
            and t.get("name") != "query's neighbours"}
    (query,) = [t["marker"] for t in traces if t.get("name") == "query"]
    return refs, query


def test_markers_match_in_2d_and_3d_and_the_query_has_its_own_colour(seeded):
    from raiox_core.synthetic import demo_files

    data = demo_files(per_diameter=1)[0][1]
    flat, query_2d = _markers(_query_upload(explorer("PCA"), data))
    deep, query_3d = _markers(_query_upload(explorer("PCA", three_d=True), data))
    assert flat == deep and len(flat) > len(SOLID_SYMBOLS)  # same colour and symbol per model, both ways
    assert {symbol for _, symbol in flat.values()} <= SOLID_SYMBOLS
    colours = {colour for colour, _ in flat.values()}
    assert query_2d["color"] == query_3d["color"] == "black" and "black" not in colours
    assert all(max(int(c[i:i + 2], 16) for i in (1, 3, 5)) - min(int(c[i:i + 2], 16) for i in (1, 3, 5)) >= 0x30
               for c in colours)  # no grey or near-black manufacturer to mistake for the query


def _query_upload(at, data: bytes, name: str = "query.png"):
    at.file_uploader(key="explorer_query").upload(name, data, "image/png")
    return at.run()


def test_hostile_labels_stay_text_and_diameters_show_as_stored(app_env, db):
    from raiox_dashboard import resources
    from raiox_core.ingest import LabelOverride, Source, ingest
    from raiox_core.synthetic import demo_files

    evil = "<a href='https://evil.example'>x</a> [y](https://evil.example)"
    files = demo_files(per_diameter=1)[:5]
    report = ingest([Source.from_bytes(f"<i>{i}<i>.png", d, LabelOverride(f"{evil} {i}", "M", 3.75 if i else 4.1))
                     for i, (_, d) in enumerate(files)],
                    db=resources.get_db(), storage=resources.get_storage(), embedder=resources.get_embedder(), limits=ImageLimits())
    at = _query_upload(explorer("PCA"), files[1][1], name="[q](https://evil.example).png")
    assert not at.exception, at.exception
    # What plotly draws as text: legend names, hover names and hover fields (not its own hover template).
    shown = json.dumps([[t.get("name"), t.get("hovertext"), t.get("customdata")] for t in figure(at)["data"]])
    assert "<a href" not in shown and "<i>" not in shown  # plotly would draw these as a link and italics
    assert "&lt;a href='https://evil.example'&gt;x&lt;/a&gt;" in shown and "&lt;i&gt;1&lt;" in shown
    assert '"3.75"' in shown and '"4.1"' in shown  # the hover's diameter, exactly as stored
    # The uploaded file's name and a picked reference's caption are Markdown-escaped.
    at.selectbox(key="explorer_pick").set_value(report.ingested[0].id).run()
    captions = [img.caption for element in at.get("image") for img in element.proto.imgs]
    assert len(captions) == 2 and all(re.search(r"(?<!\\)[\[\]()<>]", c) is None for c in captions)
    shown = [re.sub(r"\\(.)", r"\1", c).replace("\u2060", "") for c in captions]  # as a person reads them
    assert shown == ["[q](https://evil.example).png", f"#{report.ingested[0].id} · {evil} 0 M · 4.1 mm · <i>0<i>.png"]
    neighbours = [f.value for f in at.dataframe if "similarity" in f.value.columns][0]
    assert set(neighbours["mm"]) <= {"3.75", "4.1"}


def test_the_calibration_curve_once_evaluated(seeded):
    from raiox_dashboard import resources
    from raiox_core import calibration

    at = explorer("PCA")
    assert any("No calibration for this model yet" in i.value for i in at.info)
    model = resources.get_embedder().embedding_model
    data = calibration.LabelledVectors.load(resources.get_db(), model)
    calibration.save(resources.get_db(), model, calibration.evaluate_references(data))
    at.run()
    assert not at.exception
    curve = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert [t["name"] for t in curve["data"]] == ["answered confidently (coverage)", "right among those (precision)"]
    assert "Threshold in force: 60%, the default, as RAIOX\\_TARGET\\_PRECISION is not set." in captions(at)
