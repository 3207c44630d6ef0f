"""Ingestion and matching through the real pipeline: embedded PostgreSQL, local and S3 storage, untrained model."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from raiox_core.images import ImageLimits
from raiox_core.references import delete_reference, find_orphans, reembed, remove_orphans
from raiox_core.db import Filters
from raiox_core.errors import StorageError
from raiox_core.ingest import LabelOverride, Source, collect_sources, ingest, ingest_paths
from raiox_core.match import match_bytes, vote
from raiox_core.references import Neighbour
from raiox_core.storage import REFERENCE_PREFIX, open_storage
from raiox_core.synthetic import demo_files


@pytest.fixture(params=["local", "s3"])
def storage(request, settings):
    if request.param == "s3":
        settings = request.getfixturevalue("s3_settings")
    return open_storage(settings)


@pytest.fixture(scope="module")
def files():
    return demo_files(per_diameter=1)[:12]


def sources(files):
    return [Source.from_bytes(name, data) for name, data in files]


def assert_consistent(db, storage):
    """Every row has its object and vector; every object has its row."""
    keys = set(storage.list_keys(REFERENCE_PREFIX))
    assert keys == db.object_keys()
    assert db.stats()["embedding_models"].get("ViT-B-32/untrained", 0) == db.count()


def test_ingest_then_repeat_is_a_no_op(db, storage, embedder, files):
    first = ingest(sources(files), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert len(first.ingested) == len(files) and not first.rejected
    assert {i.manufacturer for i in first.ingested} >= {"Nobel Biocare", "Straumann"}
    again = ingest(sources(files), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert len(again.duplicates) == len(files) and not again.ingested
    assert {d.id for d in again.duplicates} == {i.id for i in first.ingested}
    assert db.count() == len(files)
    assert_consistent(db, storage)


def test_exact_copy_matches_itself_first(db, storage, embedder, files):
    ingest(sources(files), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    name, data = files[5]
    result = match_bytes(data, db=db, embedder=embedder, threshold=0.6, k=3, limits=ImageLimits())
    assert result.matches[0].source_filename == name
    assert result.matches[0].similarity >= 0.99
    assert len(result.matches) == 3 and result.log_id is not None
    logged = db.match_log(result.log_id)
    assert logged["query_sha256"] == result.query.sha256 and logged["embedding_model"] == "ViT-B-32/untrained"
    as_json = result.to_json()
    assert set(as_json) >= {"file", "embedding_model", "confident", "matches", "vote"}
    assert set(as_json["matches"][0]) == {"id", "manufacturer", "model", "diameter_mm", "similarity", "source_filename"}


def test_manufacturer_filter_and_threshold(db, storage, embedder, files):
    report = ingest(sources(files), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    straumann_ids = {i.id for i in report.ingested if i.manufacturer == "Straumann"}
    assert 0 < len(straumann_ids) < len(files)
    query = demo_files(per_diameter=1)[len(files)][1]  # a Straumann X-ray that is not a reference: the vote decides
    straumann = Filters(manufacturer="Straumann")

    # k covers every reference: unfiltered, the search sees them all; filtered, exactly the Straumann ones.
    everyone = match_bytes(query, db=db, embedder=embedder, threshold=0.5, k=len(files), limits=ImageLimits())
    assert len({m.manufacturer for m in everyone.matches}) > 1 and everyone.confidence_of == "manufacturer"
    only = match_bytes(query, db=db, embedder=embedder, threshold=0.5, k=len(files), filters=straumann, limits=ImageLimits())
    assert {m.id for m in only.matches} == straumann_ids
    assert only.exact is None and only.restricted_to == "Straumann"
    # One manufacturer searched: its vote is decided, so the confidence is the model vote's leading share.
    assert [s.label for s in only.manufacturer_vote] == ["Straumann"] and only.confidence_of == "model"
    assert only.confidence == pytest.approx(only.model_vote[0].probability)
    assert db.match_log(only.log_id)["filters"] == {"manufacturer": "Straumann"}

    # The threshold decides: confident when the leading share reaches it, not when it falls short.
    share = only.confidence
    assert 0 < share < 1
    reached = match_bytes(query, db=db, embedder=embedder, threshold=share, k=3, filters=straumann, limits=ImageLimits())
    assert reached.confident and reached.confidence == share
    assert reached.answer == only.model_vote[0].label
    short = match_bytes(query, db=db, embedder=embedder, threshold=min(1.0, share + 1e-6), k=3, filters=straumann, limits=ImageLimits())
    assert not short.confident and short.answer == "no confident match"
    assert db.match_log(short.log_id)["confident"] is False


def test_duplicates_within_one_batch(db, storage, embedder, files):
    name, data = files[0]
    report = ingest([Source.from_bytes(name, data), Source.from_bytes(name.replace("_01", "_99"), data)],
                    db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert [i.status for i in report.items] == ["ingested", "duplicate"]
    assert report.items[1].id == report.items[0].id


def test_bad_files_are_rejected_with_reasons(db, storage, embedder, files):
    batch = [
        Source.from_bytes("NOBEL_REPLACE_4.3mm_01.jpg", b""),
        Source.from_bytes("NOBEL_REPLACE_4.3mm_02.jpg", b"just some text, not an image"),
        Source.from_bytes("radiograph.png", files[0][1]),  # no labels in the name
    ]
    report = ingest(batch, db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert [i.status for i in report.items] == ["rejected"] * 3
    for item in report.items:
        assert item.reason.endswith(".") and "\n" not in item.reason
    assert db.count() == 0 and storage.list_keys(REFERENCE_PREFIX) == []


def test_explicit_labels_override_the_name(db, storage, embedder, files):
    src = Source.from_bytes("scan-0001.png", files[0][1], LabelOverride("zimmer", "tsv", 4.7))
    report = ingest([src], db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    item = report.ingested[0]
    assert (item.manufacturer, item.model, item.diameter_mm) == ("Zimmer", "TSV", 4.7)
    assert db.get(item.id)["source_filename"] == "scan-0001.png"


def test_storage_failure_leaves_no_row(db, settings, embedder, files):
    class FailingStorage(type(open_storage(settings))):
        def put(self, key, data, content_type="image/png"):
            raise StorageError("The storage is down.")

    storage = FailingStorage(settings.data_dir / "objects")
    report = ingest(sources(files[:4]), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert len(report.rejected) == 4 and "storage is down" in report.rejected[0].reason
    assert "Not attempted" in report.rejected[1].reason
    assert db.count() == 0 and storage.list_keys(REFERENCE_PREFIX) == []


def test_s3_outage_leaves_no_row_and_rerun_finishes(db, s3_settings, embedder, files):
    from raiox_core.storage import S3Storage

    down = S3Storage("nowhere", "", endpoint_url="http://127.0.0.1:9", max_retries=0, timeout_s=1)
    report = ingest(sources(files[:3]), db=db, storage=down, embedder=embedder, limits=ImageLimits())
    assert len(report.rejected) == 3 and db.count() == 0
    up = open_storage(s3_settings)
    report = ingest(sources(files[:3]), db=db, storage=up, embedder=embedder, limits=ImageLimits())
    assert len(report.ingested) == 3
    assert_consistent(db, up)


def test_database_lost_after_store_leaves_no_orphan(db, pg_url, storage, embedder, files, monkeypatch):
    import psycopg

    real_put = storage.put

    def put_then_lose_the_database(key, data, content_type="image/png"):
        real_put(key, data, content_type)
        # Cut every other connection, the inserting one included: its commit must fail now.
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE pid <> pg_backend_pid() AND datname = current_database()")

    monkeypatch.setattr(storage, "put", put_then_lose_the_database)
    report = ingest(sources(files[:2]), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert report.rejected[0].reason.startswith("Lost the connection to the database")
    assert storage.list_keys(REFERENCE_PREFIX) == []
    monkeypatch.setattr(storage, "put", real_put)
    # The pool replaces the dead connections: the same batch now goes through without a restart.
    assert db.count() == 0
    assert len(ingest(sources(files[:2]), db=db, storage=storage, embedder=embedder, limits=ImageLimits()).ingested) == 2
    assert_consistent(db, storage)


def test_folders_and_zip_archives(tmp_path, db, storage, embedder, files):
    folder = tmp_path / "refs" / "nested"
    folder.mkdir(parents=True)
    (folder / files[0][0]).write_bytes(files[0][1])
    (folder / "notes.txt").write_text("not an image")
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(f"deep/dir/{files[1][0]}", files[1][1])
        z.writestr("../evil.png", files[2][1])
        z.writestr("/abs.png", files[2][1])
        z.writestr("readme.md", "hello")
    report = ingest_paths([tmp_path / "refs", archive, tmp_path / "missing.png"], db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    by_status = {s: sorted(i.file for i in report.of(s)) for s in ("ingested", "rejected")}
    assert len(by_status["ingested"]) == 2
    unsafe = [i for i in report.rejected if "evil" in i.file or "abs.png" in i.file]
    assert len(unsafe) == 2 and all("path" in i.reason for i in unsafe)
    assert any("missing.png" in i.file and "does not exist" in i.reason for i in report.rejected)
    assert db.get(report.ingested[-1].id)["source_filename"] == files[1][0]


def test_delete_removes_row_vector_and_object(db, storage, embedder, files):
    report = ingest(sources(files[:2]), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    delete_reference(db, storage, report.ingested[0].id)
    assert db.count() == 1
    assert_consistent(db, storage)


def test_orphans_are_found_and_swept(db, storage, embedder, files):
    ingest(sources(files[:1]), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    storage.put(REFERENCE_PREFIX + "f" * 64 + ".png", b"left behind by a killed process")
    assert find_orphans(db, storage, grace_s=3600) == []  # young: may belong to an ingestion in flight
    assert remove_orphans(db, storage, grace_s=0) == [REFERENCE_PREFIX + "f" * 64 + ".png"]
    assert_consistent(db, storage)


def test_reembed_adds_vectors_for_another_model(db, storage, embedder, files):
    ingest(sources(files[:3]), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    from dataclasses import replace

    other = replace(embedder, embedding_model="ViT-B-32/other")
    assert reembed(db, storage, other) == 3
    assert reembed(db, storage, other) == 0
    assert db.stats()["embedding_models"] == {"ViT-B-32/untrained": 3, "ViT-B-32/other": 3}


def test_vote_weights_and_order():
    n = lambda m, mod, s: Neighbour(0, m, mod, 4.0, s, "f", "k", "upload")  # noqa: E731
    manufacturers, models = vote([n("A", "X", 0.95), n("A", "Y", 0.90), n("B", "Z", 0.70)])
    assert manufacturers[0].label == "A" and manufacturers[0].probability > 0.99
    assert sum(s.probability for s in models) == pytest.approx(1.0)
    assert [s.label for s in models][:2] == ["A X", "A Y"]


# -- the per-file rule: image first, then duplicate, then name; every reason that applies ----------


def test_image_reasons_come_before_the_name_and_both_are_given(db, settings, embedder):
    storage = open_storage(settings)
    tiny = io.BytesIO()
    Image.new("L", (20, 20), 90).save(tiny, format="PNG")
    report = ingest([Source.from_bytes("scan 7.png", tiny.getvalue())], db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    (item,) = report.items
    assert item.status == "rejected"
    assert item.reason.startswith("The image is 20x20 pixels; each side must be at least 32 pixels. The name 'scan 7.png'")


def test_a_copy_under_a_bad_name_is_a_duplicate_of_the_stored_reference(db, settings, embedder, files):
    storage = open_storage(settings)
    (first,) = ingest(sources(files[:1]), db=db, storage=storage, embedder=embedder, limits=ImageLimits()).items
    data = files[0][1]
    report = ingest([Source.from_bytes("copy of scan.png", data), Source.from_bytes("another copy.png", data)],
                    db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert [(i.status, i.id, i.reason) for i in report.items] == [("duplicate", first.id, None)] * 2
    assert report.to_json()["duplicates"] == [{"file": "copy of scan.png", "id": first.id},
                                              {"file": "another copy.png", "id": first.id}]


def test_within_a_run_a_copy_under_a_bad_name_is_a_duplicate_of_the_first(db, settings, embedder, files):
    name, data = files[0]
    report = ingest([Source.from_bytes(name, data), Source.from_bytes("radiograph.png", data)],
                    db=db, storage=open_storage(settings), embedder=embedder, limits=ImageLimits())
    assert [i.status for i in report.items] == ["ingested", "duplicate"] and report.items[1].id == report.items[0].id


def test_the_dashboard_plan_judges_as_ingestion_does(files):
    from raiox_core.ingest import plan

    name, data = files[0]
    batch = [Source.from_bytes(name, data), Source.from_bytes("radiograph.png", data),
             Source.from_bytes("radiograph.png", b"text"), Source.from_bytes("x.png", files[1][1])]
    images = [(f"sha-{i}", None) for i in (0, 0)] + [(None, "The file is not an image.")] + [("sha-known", None)]
    verdicts = plan(batch, images, {"sha-known": 12})
    assert [(v.status, v.duplicate_id, v.duplicate_of) for v in verdicts] == [
        ("ok", None, None), ("duplicate", None, name), ("rejected", None, None), ("duplicate", 12, None)]
    assert verdicts[0].labels.manufacturer == "Nobel Biocare"
    assert verdicts[2].reason.startswith("The file is not an image. The name 'radiograph.png' does not follow")


def test_an_oversized_file_or_entry_states_its_real_size(tmp_path, db, settings, embedder):
    
    big = tmp_path / "NOBEL_REPLACE_4.3mm_01.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(26_000 - 8))
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("NOBEL_REPLACE_4.3mm_02.png", bytes(30_000))
    report = ingest_paths([big, archive], db=db, storage=open_storage(settings), embedder=embedder,
                          limits=ImageLimits(max_bytes=10_000))
    reasons = {i.file: i.reason for i in report.rejected}
    assert reasons == {"NOBEL_REPLACE_4.3mm_01.png": "The file is 25.4 KB; the limit is 9.8 KB.",
                       "batch.zip:NOBEL_REPLACE_4.3mm_02.png": "The file is 29.3 KB; the limit is 9.8 KB."}


def test_names_that_are_not_utf8_are_shown_with_replacement_characters(tmp_path, db, settings, embedder, files):
    import json
    import os

    folder = tmp_path / "refs"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"NOBEL_REPLACE_4.3mm_\xe9.png"), "wb") as f:  # Latin-1 'é'
        f.write(files[0][1])
    archive = tmp_path / "latin1.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("STRAUMANN_BL_4.1mm_x.png")
        z.writestr(info, files[1][1])
    raw = archive.read_bytes().replace(b"STRAUMANN_BL_4.1mm_x.png", b"STRAUMANN_BL_4.1mm_\xe9.png")
    archive.write_bytes(raw)  # a name in a legacy code page: no UTF-8 flag, so read as cp437
    report = ingest_paths([folder, archive, os.fsdecode(os.fsencode(tmp_path) + b"/gone-\xff.png")],
                          LabelOverride("Zimmer", "TSV", 4.7), db=db, storage=open_storage(settings), embedder=embedder, limits=ImageLimits())
    files_seen = {i.file: i.status for i in report.items}
    assert files_seen == {"refs/NOBEL_REPLACE_4.3mm_\ufffd.png": "ingested", "latin1.zip:STRAUMANN_BL_4.1mm_\u0398.png": "ingested",
                          f"{tmp_path}/gone-\ufffd.png": "rejected"}
    json.dumps(report.to_json(), ensure_ascii=False).encode("utf-8")  # printable and JSON-safe
    assert {r["source_filename"] for r in db.list()} == {"NOBEL_REPLACE_4.3mm_\ufffd.png", "STRAUMANN_BL_4.1mm_\u0398.png"}


def test_an_archive_with_false_utf8_names_is_refused_in_one_sentence(tmp_path, files):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("NOBEL_REPLACE_4.3mm_\u00e9.png", files[0][1])  # non-ASCII: written with the UTF-8 flag
    archive.write_bytes(archive.read_bytes().replace("\u00e9".encode(), b"\xff\xfe"))
    found, refused = collect_sources([archive])
    assert not found and [r.reason for r in refused] == [
        "bad.zip marks its entry names as UTF-8, but they are not; re-create the archive."]


def test_fifos_and_dangling_links_in_a_folder_are_reported_not_read(tmp_path):
    import os

    folder = tmp_path / "refs"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")  # opening it would wait for a writer forever
    (folder / "link.png").symlink_to(tmp_path / "nowhere.png")
    found, refused = collect_sources([folder, folder / "pipe.png"])
    assert not found
    assert {(r.file, r.reason) for r in refused} == {
        ("refs/link.png", "It is a link to something that does not exist."),
        ("refs/pipe.png", "It is a named pipe (FIFO), not an image file, and was not read."),
        (str(folder / "pipe.png"), "It is a named pipe (FIFO), not an image file, and was not read."),
    }
