"""Bulk writes: many vectors into a model that has few go into the table without its index, built once at the
end; a small write keeps the live index; a restore killed in the middle leaves every reference whole, and
the missing index is named by `raiox doctor` and built by `--repair` (or the next bulk write)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.data import tiny_references
from raiox_core import cli as raiox_cli
from raiox_core import db as dbmod
from raiox_core.backup import backup
from raiox_core.storage import open_storage
from tests.envs import subprocess_env
from tests.reliability.test_backup_restore import empty_db  # noqa: F401  (a fixture)

MODEL, DIM = "test/bulk", 32


def _index_oid(db, embedding_model: str = MODEL) -> int | None:
    with db.connection() as conn:
        row = conn.execute("SELECT oid FROM pg_class WHERE relname = %s AND relkind = 'i'",
                           (dbmod._index_name(embedding_model),)).fetchone()
    return row[0] if row else None


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _add(db, n: int, seed: int, storage=None) -> list[int]:
    refs = tiny_references(n, seed, side=12)
    if storage is not None:
        for row, png in refs:
            storage.put(row["object_key"], png)
    vectors = _unit(n, seed)
    ids = db.insert_many([r for r, _ in refs], [{MODEL: v} for v in vectors])
    return [ids[r["sha256"]] for r, _ in refs]


@pytest.fixture
def small_bulk(monkeypatch):
    """Bulk thresholds for sets of hundreds, so the path is exercised in a test's time."""
    monkeypatch.setattr(dbmod, "BULK_MIN_VECTORS", 100)


def _searches_agree_with_exact(db, queries: np.ndarray) -> None:
    for q in queries:
        exact = [r["id"] for r in db.search(q, MODEL, k=10, exact=True)]
        assert [r["id"] for r in db.search(q, MODEL, k=10, ef_search=200)] == exact


def test_a_large_write_goes_in_without_the_index_which_is_built_once_at_the_end(db, small_bulk):
    assert _add(db, 50, seed=1) and _index_oid(db) is not None  # 50 < BULK_MIN_VECTORS: the live index
    before = _index_oid(db)
    with db.bulk_load({MODEL: 400}):  # 400 of 450: drop now, build at the end
        assert _index_oid(db) is None
        for seed in range(2, 6):  # four writes of 100, each its own transaction, none building the index
            _add(db, 100, seed)
            assert _index_oid(db) is None
        assert db.unindexed_models() == {}  # this process's own bulk load is not a missing index
    built = _index_oid(db)
    assert built is not None and built != before
    assert db.stats()["embedding_models"][MODEL] == 450
    _searches_agree_with_exact(db, _unit(5, seed=99))


def test_a_small_share_keeps_the_live_index_and_a_failed_block_still_builds_it(db, small_bulk):
    _add(db, 400, seed=1)
    live = _index_oid(db)
    with db.bulk_load({MODEL: 100}):  # 100 of 500 is under BULK_SHARE: cheaper through the graph
        _add(db, 100, seed=2)
        assert _index_oid(db) == live
    with pytest.raises(RuntimeError):
        with db.bulk_load({MODEL: 400}):
            _add(db, 100, seed=3)
            raise RuntimeError("storage went away")
    assert _index_oid(db) not in (None, live)  # rebuilt over what was committed before the failure
    assert db.stats()["embedding_models"][MODEL] == 600
    _searches_agree_with_exact(db, _unit(5, seed=98))


# The restore run by the test below: the CLI's own restore, with bulk thresholds for a few hundred references,
# ten references per transaction, and a slow storage put, so that the kill lands between its transactions.
KILLED_RESTORE = """
import sys, time
from raiox_core import backup, db, storage
db.BULK_MIN_VECTORS, backup.BULK_ROWS = 100, 10
real_put, real_insert = storage.LocalStorage.put, db.Database.insert_many
storage.LocalStorage.put = lambda self, *a, **k: (time.sleep(0.02), real_put(self, *a, **k))[1]
db.Database.insert_many = lambda self, *a: (real_insert(self, *a), print("committed", flush=True))[0]
sys.exit(__import__("raiox_core.cli").cli.main(["restore", sys.argv[1]]))
"""


def test_a_killed_restore_leaves_whole_references_and_doctor_builds_the_missing_index(
        db, empty_db, settings, tmp_path, capsys, monkeypatch):  # noqa: F811
    source = open_storage(settings)
    _add(db, 300, seed=7, storage=source)
    archive = tmp_path / "b.zip"
    backup(db, source, archive)
    target = tmp_path / "target"
    env = {**subprocess_env(), "RAIOX_DATABASE_URL": empty_db.url, "RAIOX_DATA_DIR": str(target),
           "RAIOX_PRETRAINED": "none", "RAIOX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RESTORE, str(archive)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        committed = 0
        for line in iter(proc.stdout.readline, ""):
            committed += line.strip() == "committed"
            if committed >= 3:
                break
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert committed >= 3, "the restore ended before it could be killed"

    restored = empty_db.stats()["embedding_models"].get(MODEL, 0)
    assert 0 < restored < 300 and restored % 10 == 0  # whole transactions only
    assert empty_db.missing_embeddings(MODEL) == []  # no reference without its vector
    assert empty_db.unindexed_models() == {MODEL: restored}
    target_storage = open_storage(settings.with_(data_dir=target))
    stored = set(target_storage.list_keys("referencia/"))
    assert {r["object_key"] for r in empty_db.list(limit=1000)} <= stored  # every row has its image

    doctor = raiox_cli._index_check(empty_db, repair=False)
    assert f"{MODEL}: no index ({restored:,} vectors scanned exactly" in doctor
    assert raiox_cli._index_check(empty_db, repair=True).startswith("1 rebuilt")
    assert _index_oid(empty_db) is not None and empty_db.unindexed_models() == {}
    _searches_agree_with_exact(empty_db, _unit(3, seed=97))

    # Run again, it finishes the restore, and measures the recall probe for what it wrote.
    for name, value in env.items():
        if name.startswith("RAIOX_"):
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert raiox_cli.main(["restore", str(archive)]) == 0
    out = capsys.readouterr().out
    assert f"Restored {300 - restored} references ({restored} already present)" in out
    assert f"Search recall: {MODEL}: exact scans (a set this small is scanned exactly)" in out
    assert empty_db.unindexed_models() == {} and empty_db.stats()["embedding_models"][MODEL] == 300
