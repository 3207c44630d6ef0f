"""Concurrency: three `raiox ingest` processes on overlapping folders into one S3 bucket; 32 matches at once in
one process; a delete racing a re-ingestion of the same image."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from raiox_core.images import ImageLimits
from raiox_core.references import delete_reference
from raiox_core.ingest import Source, ingest
from raiox_core.match import match_bytes
from raiox_core.storage import open_storage
from tests.reliability.conftest import assert_consistent, labelled_pngs, raiox_command


def test_three_processes_ingesting_overlapping_folders_into_one_bucket_store_each_image_once(
        cli_env, tmp_path, db, s3_settings):
    # As ingestion hosts sharing one database and one S3 bucket would: every pair of folders overlaps.
    files = labelled_pngs(36, start=200)
    folders = {"a": files[:20], "b": files[10:30], "c": files[20:] + files[:5]}
    for folder, members in folders.items():
        (tmp_path / folder).mkdir()
        for name, data in members:
            (tmp_path / folder / name).write_bytes(data)
    env = {**cli_env, "RAIOX_STORAGE_URL": s3_settings.storage_url, "RAIOX_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url}
    procs = [subprocess.Popen(raiox_command("ingest", tmp_path / folder, "--json"), env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for folder in folders]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0 and "Traceback" not in err, err
    reports = [json.loads(out) for out, _ in outputs]

    ingested = [i for r in reports for i in r["ingested"]]
    assert len(ingested) == len(files) and not any(r["rejected"] for r in reports)
    assert sum(len(r["duplicates"]) for r in reports) == sum(map(len, folders.values())) - len(files)
    # Whichever process lost the race on an image reports the winner's id.
    ids = {i["file"].split("/")[-1]: i["id"] for i in ingested}
    for report in reports:
        for dup in report["duplicates"]:
            assert dup["id"] == ids[dup["file"].split("/")[-1]]
    rows = assert_consistent(db, open_storage(s3_settings))  # one object per row in the bucket, no orphan
    assert sorted(r["source_filename"] for r in rows) == sorted(name for name, _ in files)


def test_32_concurrent_matches_agree_with_sequential_ones(db, settings, embedder):
    files = labelled_pngs(12, start=300)
    storage = open_storage(settings)
    ingest([Source.from_bytes(n, d) for n, d in files], db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    queries = [files[i % len(files)][1] for i in range(32)]

    def match(data: bytes) -> dict:
        result = match_bytes(data, db=db, embedder=embedder, threshold=0.6, k=5, limits=ImageLimits())
        assert result.log_id is not None
        return result.to_json()

    sequential = [match(q) for q in queries]
    with ThreadPoolExecutor(32) as pool:  # the session's embedder and the Database's pool, shared
        concurrent = list(pool.map(match, queries))
    assert concurrent == sequential  # ids, labels, similarities and votes, to the last digit
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM match_log").fetchone()[0] == 64



class SlowDelete:
    """The real storage, whose object deletes wait until released: a slow delete, held open on purpose."""

    def __init__(self, storage):
        self._storage = storage
        self.deleting, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def delete(self, key: str) -> None:
        self.deleting.set()
        assert self.release.wait(120), "never released"
        self._storage.delete(key)


def waiting_for_an_image_lock(db) -> bool:
    with db.connection() as conn:
        return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0] > 0


def test_a_delete_racing_a_reingestion_of_the_same_image_leaves_the_new_reference_its_image(db, settings, embedder):
    storage = open_storage(settings)
    batch = [Source.from_bytes(n, d) for n, d in labelled_pngs(1, start=400)]
    (first,) = ingest(batch, db=db, storage=storage, embedder=embedder, limits=ImageLimits()).ingested
    slow = SlowDelete(storage)
    with ThreadPoolExecutor(2) as pool:
        deleting = pool.submit(delete_reference, db, slow, first.id)
        assert slow.deleting.wait(120)  # the row is deleted; the delete of its image is under way
        again = pool.submit(ingest, batch, db=db, storage=slow, embedder=embedder, limits=ImageLimits())
        # Release the delete once the re-ingestion has either finished (the race) or waits for the image.
        deadline = time.monotonic() + 120
        while not (again.done() or waiting_for_an_image_lock(db)):
            assert time.monotonic() < deadline, "the re-ingestion neither finished nor waited"
            time.sleep(0.01)
        slow.release.set()
        deleting.result()
        report = again.result()
    assert len(report.ingested) == 1
    assert len(assert_consistent(db, storage)) == 1  # the new reference has its image
