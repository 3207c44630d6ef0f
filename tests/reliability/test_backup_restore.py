"""raiox_core.backup: a portable archive of references, vectors (every embedding_model) and images.

Round trip from one database and local storage into an empty database on S3 storage: the same
matches; restore is all or nothing per reference and idempotent; damaged or foreign archives are
refused in one sentence before anything is written.
"""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile
from dataclasses import replace

import numpy as np
import psycopg
import pytest

from raiox_core import cli as raiox_cli
from raiox_core.backup import BackupError, backup, restore
from raiox_core.images import ImageLimits
from raiox_core.references import delete_reference, reembed
from raiox_core.db import Database, migrate
from raiox_core.errors import StorageError
from raiox_core.ingest import LabelOverride, Source, ingest
from raiox_core.match import match_bytes
from raiox_core.storage import open_storage
from tests.reliability.conftest import (
    MODEL_ID,
    SQL_NAME,
    assert_consistent,
    assert_no_personal_data,
    assert_sentence,
    dicom_with_patient,
    encode,
    labelled_pngs,
    picture,
)

OTHER_MODEL = "ViT-B-32/other"
FILES = labelled_pngs(8, start=600)


@pytest.fixture
def empty_db(pg_url):
    """A second, empty database on the session's server: the restore target."""
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS raiox_restore WITH (FORCE)")
        admin.execute("CREATE DATABASE raiox_restore")
    url = pg_url.replace("/postgres?", "/raiox_restore?", 1)
    assert url != pg_url
    migrate(url)
    database = Database(url, description="restore target")
    yield database
    database.close()


@pytest.fixture
def source_set(db, settings, embedder):
    """References in the test database and local storage: odd names, a DICOM, vectors of two embedding_models."""
    storage = open_storage(settings)
    batch = [Source.from_bytes(n, d) for n, d in FILES]
    batch += [Source.from_bytes(SQL_NAME, encode(picture(700), "PNG"), LabelOverride("<b>Zimmer</b>", "TSV", 4.7)),
              Source.from_bytes("NEODENT_DRIVE_3.5mm_70.dcm", dicom_with_patient(701), None)]
    assert len(ingest(batch, db=db, storage=storage, embedder=embedder, source="synthetic", limits=ImageLimits()).ingested) == len(batch)
    assert reembed(db, storage, replace(embedder, embedding_model=OTHER_MODEL)) == len(batch)
    return storage


def answers(db, embedder, queries) -> list[dict]:
    """The match JSON without database ids (restore assigns new ones)."""
    out = []
    for data in queries:
        result = match_bytes(data, db=db, embedder=embedder, threshold=0.6, k=5, log=False, limits=ImageLimits()).to_json()
        for m in result["matches"]:
            del m["id"]
        if result["exact_reference"]:  # the answer names the reference by its id
            del result["exact_reference"]["id"], result["answer"]
        out.append(result)
    return out


def rows_by_sha(db) -> dict[str, dict]:
    keep = ("manufacturer", "model", "diameter_mm", "source_filename", "width", "height", "source", "object_key")
    return {r["sha256"]: {k: r[k] for k in keep} for r in db.list(limit=10_000)}


def vectors_by_sha(db, embedding_model) -> dict[str, list]:
    sha_of = {r["id"]: r["sha256"] for r in db.list(limit=10_000)}
    return {sha_of[r["id"]]: r["embedding"].tolist() for r in db.embeddings(embedding_model)}


def test_round_trip_into_an_empty_database_on_s3_gives_the_same_matches(
    db, source_set, embedder, empty_db, s3_settings, tmp_path
):
    queries = [FILES[0][1], FILES[5][1], encode(picture(999), "PNG")]  # two references and a stranger
    before = answers(db, embedder, queries)
    calls = []
    path = tmp_path / "raiox.zip"
    assert backup(db, source_set, path, progress=lambda *a: calls.append(a)) == {"references": 10, "vectors": 20, "missing": []}
    assert calls[-1] == (10, 10, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "raiox.zip"]  # no temporary file left

    s3 = open_storage(s3_settings)
    calls.clear()
    assert restore(empty_db, s3, path, progress=lambda *a: calls.append(a)) == {"restored": 10, "skipped": 0, "images_restored": 0}
    assert calls[-1] == (10, 10, "done")
    assert restore(empty_db, s3, path) == {"restored": 0, "skipped": 10, "images_restored": 0}  # idempotent

    assert rows_by_sha(empty_db) == rows_by_sha(db)  # labels, names, sizes, source; new ids
    assert empty_db.stats()["embedding_models"] == {MODEL_ID: 10, OTHER_MODEL: 10}
    for embedding_model in (MODEL_ID, OTHER_MODEL):
        assert vectors_by_sha(empty_db, embedding_model) == vectors_by_sha(db, embedding_model)  # bit for bit
    assert_consistent(empty_db, s3, embedding_models=(MODEL_ID, OTHER_MODEL))
    assert answers(empty_db, embedder, queries) == before

    # References present already are skipped; missing ones are put back.
    for row in empty_db.list(limit=3):
        delete_reference(empty_db, s3, row["id"])
    assert restore(empty_db, s3, path) == {"restored": 3, "skipped": 7, "images_restored": 0}
    assert_consistent(empty_db, s3, embedding_models=(MODEL_ID, OTHER_MODEL))
    assert answers(empty_db, embedder, queries) == before


def test_restore_is_all_or_nothing_per_transaction_and_resumes(db, source_set, empty_db, settings, tmp_path, monkeypatch):
    """Restore adds references in bulk transactions (COPY): a failure takes back the whole transaction,
    rows, vectors and the images it had stored, and running it again restores everything."""
    backup(db, source_set, tmp_path / "b.zip")
    target = open_storage(settings.with_(data_dir=tmp_path / "target"))
    real_put, puts = target.put, []

    def put_fails_third_time(key, data, content_type="image/png"):
        puts.append(key)
        if len(puts) == 3:
            raise StorageError("The storage is down.")
        real_put(key, data, content_type)

    monkeypatch.setattr(target, "put", put_fails_third_time)
    with pytest.raises(StorageError, match="The storage is down."):
        restore(empty_db, target, tmp_path / "b.zip")
    assert assert_consistent(empty_db, target, embedding_models=(MODEL_ID, OTHER_MODEL)) == []  # nothing half-written
    # Puts run in parallel: at least two images were stored before the failure, and assert_consistent saw
    # every stored one taken back.
    assert len(puts) >= 3
    monkeypatch.undo()
    assert restore(empty_db, target, tmp_path / "b.zip") == {"restored": 10, "skipped": 0, "images_restored": 0}
    assert len(assert_consistent(empty_db, target, embedding_models=(MODEL_ID, OTHER_MODEL))) == 10


def rewrite(src, dst, changes: dict) -> None:
    """Copy a zip, replacing members (bytes) or dropping them (None)."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for info in old.infolist():
            if info.filename in changes:
                if changes[info.filename] is not None:
                    new.writestr(info.filename, changes[info.filename], zipfile.ZIP_DEFLATED)
            else:
                new.writestr(info, old.read(info))


def damaged_archives(good, tmp_path) -> dict:
    with zipfile.ZipFile(good) as z:
        names = z.namelist()
        manifest = json.loads(z.read("manifest.json"))
        lines = z.read("references.jsonl").decode().splitlines()
    first_image = next(n for n in names if n.startswith("images/"))
    out = {}

    def variant(name: str, changes: dict):
        out[name] = tmp_path / f"{name}.zip"
        rewrite(good, out[name], changes)

    (tmp_path / "noise.zip").write_bytes(np.random.default_rng(1).bytes(5000))
    out["noise"] = tmp_path / "noise.zip"
    (tmp_path / "empty.zip").write_bytes(b"")
    out["empty"] = tmp_path / "empty.zip"
    (tmp_path / "truncated.zip").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated"] = tmp_path / "truncated.zip"
    out["missing"] = tmp_path / "nowhere.zip"
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("readme.txt", "photos from the holidays")
    out["foreign"] = foreign
    variant("other_format", {"manifest.json": json.dumps({**manifest, "format": "someone-else"})})
    variant("newer", {"manifest.json": json.dumps({**manifest, "version": 99})})
    variant("bad_manifest", {"manifest.json": b"{not json"})
    variant("bad_record", {"references.jsonl": "\n".join([lines[0].replace('"sha256": "', '"sha256": "../../')] + lines[1:])})
    variant("bad_source", {"references.jsonl": "\n".join([lines[0].replace('"source": "synthetic"', '"source": "x"')] + lines[1:])})
    variant("count_mismatch", {"references.jsonl": "\n".join(lines[1:])})
    variant("image_missing", {first_image: None})
    variant("image_bomb", {first_image: bytes(9 << 20)})  # 9 MB of zeros, a few kB compressed
    variant("bad_vectors", {"vectors/000.npy": _npy(np.zeros((3, 7), np.float32))})
    variant("nan_vectors", {"vectors/000.npy": _npy(np.full((10, 512), np.nan, np.float32))})
    # A byte flipped inside a member: its CRC no longer matches.
    data = bytearray(good.read_bytes())
    at = data.find(b"IDAT") + 20
    data[at] ^= 0xFF
    (tmp_path / "flipped.zip").write_bytes(bytes(data))
    out["flipped"] = tmp_path / "flipped.zip"
    return out


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_damaged_or_foreign_archives_are_refused_in_one_sentence_before_anything_is_written(
    db, source_set, empty_db, settings, tmp_path
):
    good = tmp_path / "good.zip"
    backup(db, source_set, good)
    target = open_storage(settings.with_(data_dir=tmp_path / "target"))
    (tmp_path / "bad").mkdir()
    for name, path in damaged_archives(good, tmp_path / "bad").items():
        with pytest.raises(BackupError) as refused:
            restore(empty_db, target, path)
        assert_sentence(str(refused.value))
        assert empty_db.count() == 0 and target.list_keys("") == [], name

    # A well-formed archive whose last image is not the one its checksum names (crafted, or another
    # backup's): every image is checked before the first reference is written, so nothing is restored.
    with zipfile.ZipFile(good) as z:
        images = [n for n in z.namelist() if n.startswith("images/")]
        swapped = {images[-1]: z.read(images[0])}
    rewrite(good, tmp_path / "swapped.zip", swapped)
    with pytest.raises(BackupError, match="does not match its checksum") as refused:
        restore(empty_db, target, tmp_path / "swapped.zip")
    assert_sentence(str(refused.value))
    assert empty_db.count() == 0 and target.list_keys("") == []


def test_cli_backup_and_restore_errors_are_one_line(db, source_set, tmp_path, capsys, monkeypatch, pg_url, settings):
    monkeypatch.setenv("RAIOX_DATABASE_URL", pg_url)
    monkeypatch.setenv("RAIOX_DATA_DIR", str(settings.data_dir))
    (tmp_path / "photo.zip").write_bytes(b"PK\x03\x04 not really")
    for args in (["restore", str(tmp_path / "photo.zip")], ["backup", str(tmp_path)],
                 ["backup", str(tmp_path / "no" / "such" / "dir.zip")]):
        assert raiox_cli.main(args) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.endswith(".\n") and "Traceback" not in err, err
    assert raiox_cli.main(["backup", str(tmp_path / "ok.zip")]) == 0
    assert "Backed up 10 references, 20 vectors" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no half-written archive left


def test_backup_holds_no_patient_data(db, source_set, tmp_path):
    backup(db, source_set, tmp_path / "b.zip")
    with zipfile.ZipFile(tmp_path / "b.zip") as z:
        for name in z.namelist():
            assert_no_personal_data(z.read(name), f"{name} in the backup")


def test_an_empty_database_backs_up_and_restores(db, empty_db, settings, tmp_path):
    storage = open_storage(settings)
    assert backup(db, storage, tmp_path / "empty.zip") == {"references": 0, "vectors": 0, "missing": []}
    assert restore(empty_db, storage, tmp_path / "empty.zip") == {"restored": 0, "skipped": 0, "images_restored": 0}
    assert empty_db.count() == 0


def test_backup_goes_on_past_a_missing_image_and_restore_puts_a_lost_image_back(
    db, source_set, empty_db, settings, tmp_path, capsys, monkeypatch, pg_url
):
    lost = db.list(limit=3)[2]
    source_set.delete(lost["object_key"])  # the image went, the row stayed
    path = tmp_path / "b.zip"
    assert backup(db, source_set, path) == {"references": 9, "vectors": 18, "missing": [lost["id"]]}
    with zipfile.ZipFile(path) as z:
        listed = json.loads(z.read("manifest.json"))["missing_images"]
    assert [(m["id"], m["sha256"], m["source_filename"]) for m in listed] == [
        (lost["id"], lost["sha256"], lost["source_filename"])]

    target = open_storage(settings.with_(data_dir=tmp_path / "target"))
    assert restore(empty_db, target, path) == {"restored": 9, "skipped": 0, "images_restored": 0}
    gone = empty_db.list(limit=1)[0]
    target.delete(gone["object_key"])
    assert restore(empty_db, target, path) == {"restored": 0, "skipped": 9, "images_restored": 1}
    assert len(assert_consistent(empty_db, target, embedding_models=(MODEL_ID, OTHER_MODEL))) == 9

    monkeypatch.setenv("RAIOX_DATABASE_URL", pg_url)
    monkeypatch.setenv("RAIOX_DATA_DIR", str(settings.data_dir))
    assert raiox_cli.main(["backup", str(tmp_path / "cli.zip")]) == 1  # written, but incomplete
    out, err = capsys.readouterr()
    assert "Backed up 9 references, 18 vectors" in out
    assert err.count("\n") == 1 and f"1 reference was left out because its stored image is missing (#{lost['id']})" \
        in err.replace("their", "its"), err


def bomb_archive(good, dst, *, claims: int | None = None) -> None:
    """`good` with references.jsonl replaced by 256 MB of zeros (about 1 MB deflated); with `claims`, the
    size in its headers is patched to that many bytes (a lying header)."""
    with zipfile.ZipFile(good) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as new:
        for info in old.infolist():
            if info.filename != "references.jsonl":
                new.writestr(info, old.read(info))
        with new.open("references.jsonl", "w") as f:
            chunk = bytes(1 << 24)
            for _ in range(16):
                f.write(chunk)
    if claims is not None:
        data = bytearray(dst.read_bytes())
        name = b"references.jsonl"
        local, central = data.find(name) - 30, data.rfind(name) - 46
        assert data[local : local + 4] == b"PK\x03\x04" and data[central : central + 4] == b"PK\x01\x02"
        struct.pack_into("<I", data, local + 22, claims)
        struct.pack_into("<I", data, central + 24, claims)
        dst.write_bytes(bytes(data))


@pytest.mark.parametrize("claims", [None, 900], ids=["honest-header", "lying-header"])
def test_a_deflate_bomb_is_refused_without_inflating_it(db, source_set, empty_db, settings, tmp_path, claims):
    good, bomb = tmp_path / "good.zip", tmp_path / "bomb.zip"
    backup(db, source_set, good)
    bomb_archive(good, bomb, claims=claims)
    assert bomb.stat().st_size < 4 << 20
    target = open_storage(settings.with_(data_dir=tmp_path / "target"))
    tracemalloc.start()
    try:
        with pytest.raises(BackupError) as refused:
            restore(empty_db, target, bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_sentence(str(refused.value))
    assert "references.jsonl" in str(refused.value)
    assert peak < 32 << 20, f"restore held {peak >> 20} MiB for a 256 MiB member"  # a generous bound
    assert empty_db.count() == 0 and target.list_keys("") == []
