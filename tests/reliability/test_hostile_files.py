"""Hostile and awkward files through every door: ingest(), `raiox ingest`/`raiox match`, and random bytes.

Each file is either ingested correctly (orientation applied, no EXIF or DICOM data kept) or refused with
one sentence; never a traceback, a partial row or an orphan object.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st
from PIL import Image

from raiox_core.images import ImageLimits, prepare_image
from raiox_core.ingest import Source, ingest
from raiox_core.storage import REFERENCE_PREFIX, open_storage
from tests.reliability.conftest import (
    LABELS,
    SQL_NAME,
    all_text_in_database,
    assert_consistent,
    assert_no_personal_data,
    assert_sentence,
    png_chunks,
)


def check_stored_images(rows, storage) -> None:
    """Stored objects are bare normalised PNGs: no EXIF, no text chunks, no patient strings."""
    for row in rows:
        png = storage.get(row["object_key"])
        assert set(png_chunks(png)) <= {b"IHDR", b"IDAT", b"IEND"}, row["source_filename"]
        assert_no_personal_data(png, f"stored object of {row['source_filename']}")


def test_hostile_corpus_through_ingest(db, settings, embedder, corpus):
    storage = open_storage(settings)
    limits = ImageLimits.from_settings(settings)
    sources, refused = corpus.sources()
    report = ingest(sources, db=db, storage=storage, embedder=embedder, limits=limits)
    items = refused + report.items
    expected = corpus.expected()
    assert sorted(i.file for i in items) == sorted(expected)
    for item in items:
        if expected[item.file]:
            assert item.status == "ingested", (item.file, item.reason)
        else:
            assert item.status == "rejected", item.file
            assert_sentence(item.reason)

    rows = assert_consistent(db, storage)
    assert len(rows) == sum(expected.values())
    check_stored_images(rows, storage)
    assert_no_personal_data(all_text_in_database(db), "the database")

    # Awkward names are kept verbatim, as data: the SQL in one did not run, the quotes and unicode survive.
    by_name = {r["source_filename"]: r for r in rows}
    for case in corpus.cases:
        if case.accept:
            assert case.name in by_name, case.name
    assert (by_name[SQL_NAME]["manufacturer"], by_name[SQL_NAME]["model"]) == (LABELS.manufacturer, LABELS.model)
    # The EXIF orientation was applied: the stored pixels are those of the upright picture.
    rotated = by_name["NEODENT_DRIVE_3.5mm_01.jpg"]
    assert (rotated["width"], rotated["height"]) == (96, 160)
    assert rotated["sha256"] == prepare_image(_png(corpus.upright), limits=ImageLimits()).sha256

    # Running the same batch again changes nothing: the same refusals, every image a duplicate.
    again = ingest(corpus.sources()[0], db=db, storage=storage, embedder=embedder, limits=limits)
    assert not again.ingested and len(again.duplicates) == len(rows)
    assert assert_consistent(db, storage) == rows


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_hostile_corpus_through_the_cli(cli, tmp_path, corpus, db, settings):
    """`raiox ingest` (no label flags: names that do not parse are refused) then `raiox match`, as a user runs them."""
    paths = corpus.write(tmp_path / "corpus")
    proc = cli("ingest", *paths, "--json")
    assert proc.returncode == 1  # some files were refused
    report = json.loads(proc.stdout)
    expected = corpus.expected(with_labels=False)
    assert {i["file"] for i in report["ingested"]} == {f for f, ok in expected.items() if ok}
    assert {r["file"] for r in report["rejected"]} == {f for f, ok in expected.items() if not ok}
    for refusal in report["rejected"]:
        assert_sentence(refusal["reason"])
    storage = open_storage(settings.with_(data_dir=tmp_path / "data"))
    rows = assert_consistent(db, storage)
    assert len(rows) == len(report["ingested"])
    check_stored_images(rows, storage)

    proc = cli("match", *paths, "--json")
    assert proc.returncode == 1
    results = {Path(r["file"]).name: r for r in json.loads(proc.stdout)}
    images = {c.name: c.accept for c in corpus.cases} | {corpus.zip_name: False}
    assert results.keys() == images.keys()
    for name, is_image in images.items():
        if is_image:
            assert "error" not in results[name] and results[name]["matches"], name
        else:
            assert set(results[name]) == {"file", "error"}, name
            assert_sentence(results[name]["error"])
    # One log row per matched image, holding hashes and results only.
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM match_log").fetchone()[0] == sum(images.values())
    assert_no_personal_data(all_text_in_database(db), "the database")
    assert_no_personal_data(proc.stdout + proc.stderr, "the CLI output")
    assert storage.list_keys(REFERENCE_PREFIX) == sorted(r["object_key"] for r in rows)  # matching stored nothing


_MAGIC = [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP",
          b"\0" * 128 + b"DICM", b"PK\x03\x04", b"<svg", b"\xef\xbb\xbf<html>"]


@hyp_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(_MAGIC), body=st.binary(max_size=4096), name=st.sampled_from(
    ["NOBEL_REPLACE_4.3mm_01.png", "x.zip", SQL_NAME, "ç.dcm"]))
def test_random_bytes_through_ingest_are_only_ever_refused(db, settings, embedder, prefix, body, name):
    # A name that parses (or explicit labels), so the bytes, not the name, decide.
    storage = open_storage(settings)
    report = ingest([Source.from_bytes(name, prefix + body, LABELS)], db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert [i.status for i in report.items] == ["rejected"]
    assert_sentence(report.items[0].reason)
    assert db.count() == 0 and storage.list_keys("") == []
