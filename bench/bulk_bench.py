"""(l) Bulk writes: vectors per second through the live HNSW index against the bulk path (Database.bulk_load:
binary COPY without the index, one sized build at the end), and `raiox restore` of a whole archive.

Both vector figures go through Database.add_embeddings, the call `raiox reembed`, `raiox train` and restore
make, on the reference rows the references section loaded; the live figure is an upsert of a sample into a
model that already holds all n vectors, so each write pays what it would at that size.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from raiox_core.backup import backup, restore

from .data import tiny_references
from .env import BenchEnv
from .references import ReferenceSets

BULK_MODEL_ID = "bench/bulk"
LIVE_CHUNK = 500  # below BULK_MIN_VECTORS: these writes keep the live index


def _vectors(env: BenchEnv, sets: ReferenceSets, n: int) -> dict:
    """The clustered vectors of the first n references, written into their own model by the bulk path; then a
    sample of them written again through the live index."""
    vectors = sets.vectors["large"][:n]
    ids = np.arange(1, n + 1)
    start = time.perf_counter()
    with env.db.bulk_load({BULK_MODEL_ID: n}):
        for at in range(0, n, 10_000):  # chunks as reembed and restore write them (their own transactions)
            env.db.add_embeddings(BULK_MODEL_ID, dict(zip(ids[at:at + 10_000].tolist(), vectors[at:at + 10_000])))
        copied = time.perf_counter() - start
    total = time.perf_counter() - start
    live_n = min(n, 2_000)
    picked = np.random.default_rng(3).choice(n, live_n, replace=False)
    start = time.perf_counter()
    for at in range(0, live_n, LIVE_CHUNK):
        chunk = picked[at:at + LIVE_CHUNK]
        env.db.add_embeddings(BULK_MODEL_ID, dict(zip((chunk + 1).tolist(), vectors[chunk] * 0.999)))
    live = time.perf_counter() - start
    return {
        "vectors": n, "bulk_copy_s": round(copied, 2), "bulk_index_build_s": round(total - copied, 2),
        "bulk_total_s": round(total, 2), "bulk_vectors_per_s": round(n / total),
        "bulk_copy_vectors_per_s": round(n / copied),
        "live_sample": live_n, "live_s": round(live, 2), "live_vectors_per_s": round(live_n / live),
        "speedup": round((n / total) / (live_n / live), 1),
    }


def _archive(env: BenchEnv, vectors: np.ndarray) -> Path:
    """A backup of one reference per vector (the clustered ones), each with a tiny distinct image (restore's
    cost per image, not per pixel)."""
    n = len(vectors)
    env.reset()
    storage = env.storage("restore-source")
    rows = []
    for row, png in tiny_references(n, seed=5):
        storage.put(row["object_key"], png)
        rows.append(row)
    model = env.embedder.embedding_model
    with env.db.bulk_load({model: n}):
        for start in range(0, n, 10_000):
            env.db.insert_many(rows[start:start + 10_000], [{model: v} for v in vectors[start:start + 10_000]])
    path = env.root / "bench-backup.zip"
    backup(env.db, storage, path)
    return path


def _restore(env: BenchEnv, vectors: np.ndarray) -> dict:
    n = len(vectors)
    path = _archive(env, vectors)
    env.reset()
    stages: dict[str, float] = {}
    last = [time.perf_counter()]

    def progress(done: int, total: int, stage: str) -> None:
        now = time.perf_counter()
        stages[stage] = stages.get(stage, 0.0) + now - last[0]
        last[0] = now

    start = time.perf_counter()
    summary = restore(env.db, env.storage("restore-target"), path, progress)
    seconds = time.perf_counter() - start
    stages["index build"] = time.perf_counter() - last[0]  # after the last progress call: the bulk load's end
    assert summary["restored"] == n, summary
    return {"references": n, "archive_mb": round(path.stat().st_size / 2**20, 1), "seconds": round(seconds, 1),
            "references_per_s": round(n / seconds),
            "stages_s": {stage: round(s, 1) for stage, s in stages.items()}}


def run(env: BenchEnv, sets: ReferenceSets, restore_n: int) -> dict:
    """The vector figures at the large set's size, then a restore of restore_n references with the large set's
    vectors (this empties the database: it runs after every section that uses the reference sets)."""
    return {"vectors": _vectors(env, sets, sets.n_large), "restore": _restore(env, sets.vectors["large"][:restore_n])}
