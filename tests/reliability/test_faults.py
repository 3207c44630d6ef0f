"""Faults during ingestion: S3 down, hung or flaky; the database lost or stopped; the process SIGKILLed.

The recovery we promise (README, "When things fail"): re-running the same batch finishes it, each image
stored exactly once, and leaves no orphan (keys are content hashes, so an image stored for a transaction
that never committed is simply re-used); `raiox doctor --repair` removes what an abandoned batch left
behind once it is older than the 10-minute grace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import ExitStack

import psycopg
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError

from raiox_core.references import find_orphans
from raiox_core.db import Database, migrate
from raiox_core.errors import DatabaseUnavailable
from raiox_core.images import ImageLimits, prepare_image
from raiox_core.ingest import Source, ingest
from raiox_core.storage import REFERENCE_PREFIX, S3Storage, open_storage, reference_key
from tests.ports import free_port
from tests.reliability.conftest import (
    SilentEndpoint,
    assert_consistent,
    assert_sentence,
    labelled_pngs,
    raiox_command,
)

FILES = labelled_pngs(8)


def sources(files=FILES) -> list[Source]:
    return [Source.from_bytes(name, data) for name, data in files]


def assert_stopped_after_failure(report, ingested: int, first_reason: str) -> None:
    """The first `ingested` files went in; the next failed with `first_reason`; the rest were not attempted."""
    assert [i.status for i in report.items] == ["ingested"] * ingested + ["rejected"] * (len(report.items) - ingested)
    failed = report.rejected
    assert first_reason in failed[0].reason
    assert all(i.reason.startswith("Not attempted after an earlier failure") for i in failed[1:])
    for item in failed:
        assert_sentence(item.reason)


def put_hook(monkeypatch, storage, after: int, action) -> None:
    """Run `action()` just before the put that follows `after` successful puts."""
    real_put, done = storage.put, []

    def put(key, data, content_type="image/png"):
        if len(done) == after:
            action()
        real_put(key, data, content_type)
        done.append(key)

    monkeypatch.setattr(storage, "put", put)


def warm_pool(db) -> None:
    """Hold max_size connections at once, so that the pool keeps that many idle ones (as a busy app does)."""
    with ExitStack() as stack:
        for _ in range(db.pool.max_size):
            stack.enter_context(db.connection())
    assert db.pool.get_stats()["pool_available"] == db.pool.max_size


def rerun_finishes_the_batch(db, storage, embedder, files=FILES) -> None:
    report = ingest(sources(files), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert not report.rejected, [i.reason for i in report.rejected]
    rows = assert_consistent(db, storage)
    assert sorted(r["source_filename"] for r in rows) == sorted(name for name, _ in files)


# -- S3 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["refusing", "silent"])
def test_s3_down_or_hung_before_the_batch(db, embedder, endpoint, s3_endpoint):  # s3_endpoint: credentials
    silent = SilentEndpoint() if endpoint == "silent" else None
    url = silent.endpoint if silent else f"http://127.0.0.1:{free_port()}"
    storage = S3Storage("raiox-refs", "p", endpoint_url=url, timeout_s=1, max_retries=1)
    try:
        start = time.monotonic()
        report = ingest(sources(), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
        assert time.monotonic() - start < 30  # one failed put (two tries), not eight
    finally:
        if silent:
            silent.close()
    assert_stopped_after_failure(report, 0, f"Cannot reach the S3 endpoint {url}")
    assert db.count() == 0


def test_s3_server_stops_in_the_middle_of_a_batch(db, embedder, own_s3, monkeypatch):
    storage = S3Storage(own_s3.bucket, "refs", endpoint_url=own_s3.endpoint, timeout_s=2, max_retries=1)
    put_hook(monkeypatch, storage, after=3, action=own_s3.stop)
    report = ingest(sources(), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert_stopped_after_failure(report, 3, "Cannot reach the S3 endpoint")
    monkeypatch.undo()
    own_s3.start()  # the same port and, moto keeping state in memory, the same objects
    assert len(assert_consistent(db, storage)) == 3
    rerun_finishes_the_batch(db, storage, embedder)


def test_s3_times_out_in_the_middle_of_a_batch(db, embedder, own_s3, monkeypatch):
    """The server stalls past our read timeout and stores the object later anyway: the late object is an
    orphan until the batch is re-run (it is the same content, so the same key, which the re-run adopts)."""
    from moto.s3.models import S3Backend

    storage = S3Storage(own_s3.bucket, "refs", endpoint_url=own_s3.endpoint, timeout_s=1, max_retries=1)
    real_put_object, calls, late, finished_late = S3Backend.put_object, [], [], []
    client_gave_up = threading.Event()

    def slow_put_object(self, bucket_name, key_name, *args, **kwargs):
        calls.append(key_name)
        if len(calls) <= 4:
            return real_put_object(self, bucket_name, key_name, *args, **kwargs)
        late.append(key_name)  # the fifth request onwards stalls until the client has given up on it
        client_gave_up.wait(120)
        try:
            return real_put_object(self, bucket_name, key_name, *args, **kwargs)
        finally:
            finished_late.append(key_name)

    monkeypatch.setattr(S3Backend, "put_object", slow_put_object)
    try:
        report = ingest(sources(), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    finally:
        client_gave_up.set()
    assert_stopped_after_failure(report, 4, "Cannot reach the S3 endpoint")
    deadline = time.monotonic() + 60
    while len(finished_late) < len(late):  # the stalled requests finish on the server, after the client left
        assert time.monotonic() < deadline, "the stalled puts never finished"
        time.sleep(0.01)
    monkeypatch.undo()
    timed_out = reference_key(prepare_image(FILES[4][1], limits=ImageLimits()).sha256)
    assert {f"refs/{timed_out}"} == set(late)  # two tries of the same put
    assert find_orphans(db, storage, grace_s=0) == [timed_out]
    rerun_finishes_the_batch(db, storage, embedder)


def test_transient_s3_errors_in_a_batch_are_retried(db, embedder, s3_settings):
    """Built as the app builds it (open_storage: botocore standard retries, backoff with jitter)."""
    storage = open_storage(s3_settings)
    attempts: list[int] = []

    def flaky(request, **kwargs):
        attempts.append(1)
        if len(attempts) % 3 == 1:  # every third request fails once: a 503, then a dropped connection
            if len(attempts) % 2:
                body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                return AWSResponse(request.url, 503, {}, _RawBody(body))
            raise EndpointConnectionError(endpoint_url=request.url)
        return None

    storage._client.meta.events.register("before-send.s3.PutObject", flaky)
    report = ingest(sources(), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert len(report.ingested) == len(FILES), [i.reason for i in report.rejected]
    assert len(attempts) > len(FILES)  # some puts were indeed retried
    assert_consistent(db, storage)


class _RawBody:
    """Just enough of urllib3's response for botocore to parse an error body."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs):
        yield self.body


# -- the database ---------------------------------------------------------------------------------


def test_database_connection_lost_in_the_middle_of_a_batch(db, pg_url, settings, embedder, monkeypatch):
    storage = open_storage(settings)

    def cut_every_connection():
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE pid <> pg_backend_pid() AND datname = current_database()")

    warm_pool(db)  # eight idle connections, all about to die
    put_hook(monkeypatch, storage, after=3, action=cut_every_connection)
    report = ingest(sources(), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    # The fourth image was stored, then its commit failed: its object was taken back.
    assert_stopped_after_failure(report, 3, "Lost the connection to the database")
    assert len(assert_consistent(db, storage)) == 3
    monkeypatch.undo()
    rerun_finishes_the_batch(db, storage, embedder)  # the same Database: the pool replaced its connections


def test_database_stopped_and_restarted_recovers_without_a_restart(own_pg, settings, embedder):
    migrate(own_pg.url)
    db = Database(own_pg.url, description="test PostgreSQL", timeout_s=2)
    storage = open_storage(settings)
    try:
        assert len(ingest(sources(FILES[:3]), db=db, storage=storage, embedder=embedder, limits=ImageLimits()).ingested) == 3
        warm_pool(db)
        own_pg.stop()
        down_since = time.monotonic()
        for call in (db.count, lambda: db.existing(["0" * 64]), db.stats):
            start = time.monotonic()
            with pytest.raises(DatabaseUnavailable) as err:
                call()
            assert time.monotonic() - start < 5  # bounded by the pool timeout, not a hang
            assert_sentence(str(err.value))
        with pytest.raises(DatabaseUnavailable) as err:  # a batch is refused as a whole, in one sentence
            ingest(sources(), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
        assert_sentence(str(err.value))
        assert len(storage.list_keys(REFERENCE_PREFIX)) == 3  # nothing stored while the database was down
        # Stay down long enough for the pool's reconnection backoff to grow past several seconds.
        while time.monotonic() - down_since < 16:
            with pytest.raises(DatabaseUnavailable):
                db.count()
        own_pg.start()
        back = time.monotonic()
        while True:
            try:
                assert db.count() == 3
                break
            except DatabaseUnavailable:
                assert time.monotonic() - back < 5, "the same Database object did not recover within 5 s"
        rerun_finishes_the_batch(db, storage, embedder)
    finally:
        db.close()


# -- SIGKILL --------------------------------------------------------------------------------------


def test_sigkill_in_the_middle_of_a_batch(cli, cli_env, tmp_path, db, settings):
    files = labelled_pngs(40, start=100)
    folder = tmp_path / "batch"
    folder.mkdir()
    for name, data in files:
        (folder / name).write_bytes(data)
    proc = subprocess.Popen(raiox_command("ingest", folder), env=cli_env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while db.count() < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "the ingestion ended before it could be killed"
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    at_kill = db.count()
    assert 3 <= at_kill < len(files)

    storage = open_storage(settings.with_(data_dir=tmp_path / "data"))
    # No half row: every committed row has its vector and its image; at most the image in flight is extra.
    referenced = {r["object_key"] for r in db.list(limit=1000)}
    keys = set(storage.list_keys(REFERENCE_PREFIX))
    assert referenced <= keys and len(keys - referenced) <= 1
    assert db.missing_embeddings("ViT-B-32/untrained") == []

    # Recovery 1: re-run the batch. It finishes it, each image once, and adopts the image left in flight.
    proc = cli("ingest", folder, "--json")
    assert proc.returncode == 0, proc.stderr
    assert db.count() == len(files)
    assert set(storage.list_keys(REFERENCE_PREFIX)) == {r["object_key"] for r in db.list(limit=1000)}

    # Recovery 2: `raiox doctor --repair` removes what is left (a file half-written at the kill, the
    # orphan of an abandoned batch) once older than the grace period; younger ones may be in flight.
    young_orphan = storage.root / REFERENCE_PREFIX / ("f" * 64 + ".png")
    young_orphan.write_bytes(b"an image of an ingestion in progress elsewhere")
    old_orphan = storage.root / REFERENCE_PREFIX / ("e" * 64 + ".png")
    old_orphan.write_bytes(b"left by an abandoned batch")
    (storage.root / REFERENCE_PREFIX / ".abc.png.x1y2z3.raiox-tmp").write_bytes(b"half an ima")
    leftovers = [old_orphan, *storage.root.rglob("*.raiox-tmp")]  # with any the kill itself left
    hour_ago = time.time() - 3600
    for path in leftovers:
        os.utime(path, (hour_ago, hour_ago))
    proc = cli("doctor", "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"orphans  {len(leftovers)} removed" in proc.stdout
    assert young_orphan.exists() and not any(path.exists() for path in leftovers)
    young_orphan.unlink()
    assert len(assert_consistent(db, storage)) == len(files)


def test_doctor_repair_during_an_ingestion_spares_its_images(db, settings, embedder, tmp_path, monkeypatch, pg_url):
    """`raiox doctor --repair` run while another process ingests must not delete an image stored but not
    yet committed: that would leave a row without its image."""
    from raiox_core import cli as raiox_cli

    monkeypatch.setenv("RAIOX_DATABASE_URL", pg_url)
    monkeypatch.setenv("RAIOX_DATA_DIR", str(settings.data_dir))
    # Where the CLI's model load looks it up (model_state imports the name): patched in raiox_core.embedder, it
    # applied only when model_state was first imported after the patch, i.e. when this test ran first.
    monkeypatch.setattr("raiox_core.model_state.load_from_settings", lambda settings, ready_made=False: embedder)
    storage = open_storage(settings)
    real_put = storage.put

    def put_then_repair(key, data, content_type="image/png"):
        real_put(key, data, content_type)
        assert raiox_cli.main(["doctor", "--repair"]) == 0  # between this image's put and its commit

    monkeypatch.setattr(storage, "put", put_then_repair)
    report = ingest(sources(FILES[:3]), db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert len(report.ingested) == 3
    assert len(assert_consistent(db, storage)) == 3


def test_a_reference_whose_image_was_lost_is_reported_and_reingesting_the_image_restores_it(
    db, settings, embedder, monkeypatch, pg_url, capsys
):
    from raiox_core import cli as raiox_cli

    monkeypatch.setenv("RAIOX_DATABASE_URL", pg_url)
    monkeypatch.setenv("RAIOX_DATA_DIR", str(settings.data_dir))
    monkeypatch.setattr(raiox_cli.Session, "embedder", property(lambda self: embedder))
    storage = open_storage(settings)
    lost = ingest(sources(FILES[:3]), db=db, storage=storage, embedder=embedder, limits=ImageLimits()).ingested[1]
    storage.delete(db.get(lost.id)["object_key"])  # e.g. removed by hand, or by a delete that raced
    in_flight = REFERENCE_PREFIX + "f" * 64 + ".png"
    storage.put(in_flight, b"an image of an ingestion in progress elsewhere")

    def doctor(*args) -> tuple[int, dict[str, str]]:
        status = raiox_cli.main(["doctor", *args])
        lines = capsys.readouterr().out.splitlines()
        return status, {line[5:13].strip(): line[14:] for line in lines}

    remedy = (f"1 reference has no stored image (#{lost.id}); ingesting the same image again, or restoring a "
              f"backup that holds it, puts it back, and `raiox delete {lost.id}` removes them.")
    young = "(1 younger than 10 minutes {}: they may belong to an ingestion in progress)"
    status, found = doctor()
    assert status == 1 and found["images"] == remedy
    assert found["orphans"] == "0 stored images without a reference " + young.format("not counted")
    status, found = doctor("--repair")  # cannot invent the image: it says so again, and spares the young one
    assert status == 1 and found["images"] == remedy
    assert found["orphans"] == "0 removed " + young.format("kept") and storage.exists(in_flight)

    (again,) = ingest(sources(FILES[1:2]), db=db, storage=storage, embedder=embedder, limits=ImageLimits()).duplicates
    assert again.id == lost.id and again.reason == "Its stored image was missing and has been restored from this file."
    storage.delete(in_flight)
    assert len(assert_consistent(db, storage)) == 3
    status, found = doctor()
    assert status == 0 and found["images"] == "every reference has its stored image"
    assert found["orphans"] == "0 stored images without a reference"
