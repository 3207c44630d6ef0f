"""Background maps (projection_jobs): one fit per map across threads and processes, progress any caller can
read, the result kept across a restart, and a map lock that a crashed holder leaves free."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from raiox_core import projection_cache, projection_jobs
from raiox_core.projection import ProjectionParams
from raiox_core.projection_cache import fingerprint, in_id_order
from tests.core.test_projection import clustered

PCA = ProjectionParams(method="pca")


@pytest.fixture(autouse=True)
def fresh_state():
    projection_cache.clear_memory_cache()
    projection_jobs.forget_jobs()
    yield
    for key in list(projection_jobs._jobs):
        projection_jobs.wait(key, timeout=120)
    projection_cache.clear_memory_cache()
    projection_jobs.forget_jobs()


@pytest.fixture
def counted_fits(monkeypatch):
    """Every fit of a map, held at a gate until the test opens it, so that callers overlap."""
    calls: list[str] = []
    gate = threading.Event()
    real = projection_cache.project

    def fit(x, **kwargs):
        calls.append(kwargs["method"])
        kwargs["progress"](0.5, "half way (test)")
        assert gate.wait(60)
        return real(x, **kwargs)

    monkeypatch.setattr(projection_cache, "project", fit)
    return calls, gate


def key_of(ids, vectors, params=PCA, model="m"):
    return fingerprint(model, *in_id_order(ids, vectors), params)


def until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_one_fit_for_many_callers_with_progress_then_the_cached_map(tmp_path, counted_fits):
    calls, gate = counted_fits
    vectors, _ = clustered(per=20)
    ids = np.arange(1, len(vectors) + 1)[::-1]  # any order: the map is keyed in id order
    statuses = []
    callers = [threading.Thread(target=lambda: statuses.append(
        projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors))) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert {s.state for s in statuses} == {"running"} and len({s.key for s in statuses}) == 1
    key = statuses[0].key
    until(lambda: projection_jobs.status(key).text == "half way (test)")
    assert projection_jobs.status(key).fraction == 0.5  # what any session's poll shows
    progress_file = tmp_path / f".{key}.progress.json"
    assert "half way (test)" in progress_file.read_text()  # what another process shows
    gate.set()
    assert projection_jobs.wait(key, timeout=60)
    assert calls == ["pca"]
    assert projection_jobs.status(key) is None and not progress_file.exists()
    ready = projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors)
    assert ready.state == "ready" and ready.projection.source == "memory"
    assert sorted(ready.projection.ids) == sorted(ids) and calls == ["pca"]


def test_a_restart_finds_the_map_on_disk_without_fitting(tmp_path, counted_fits):
    calls, gate = counted_fits
    gate.set()
    vectors, _ = clustered()
    ids = np.arange(len(vectors))
    first = projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors)
    assert projection_jobs.wait(first.key, timeout=60)
    fitted = projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors).projection
    projection_cache.clear_memory_cache()  # a new process: nothing in memory
    projection_jobs.forget_jobs()
    again = projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors)
    assert again.state == "ready" and again.projection.source == "disk" and calls == ["pca"]
    np.testing.assert_array_equal(again.projection.coords, fitted.coords)


def test_a_failed_fit_is_reported_once_and_retried_on_request(tmp_path, monkeypatch):
    def broken(x, **kwargs):
        raise MemoryError("out of memory (test)")

    monkeypatch.setattr(projection_cache, "project", broken)
    vectors, _ = clustered()
    ids = np.arange(len(vectors))
    first = projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors)
    assert projection_jobs.wait(first.key, timeout=60)
    failed = projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors)
    assert failed.state == "failed" and "out of memory (test)" in failed.error
    monkeypatch.undo()
    assert projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors).state == "failed"  # not refitted
    projection_jobs.retry(failed.key)
    projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors)
    assert projection_jobs.wait(failed.key, timeout=60)
    assert projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors).state == "ready"
    with projection_jobs.map_lock(tmp_path, failed.key, blocking=False) as free:
        assert free  # the failed fit let go of the lock


HOLDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from raiox_core import projection_jobs
    with projection_jobs.map_lock(Path(sys.argv[1]), sys.argv[2]) as owned:
        assert owned
        print("locked", flush=True)
        time.sleep(float(sys.argv[3]))
        os._exit(9)  # dies holding the lock, without any clean-up
""")


def test_another_process_holding_the_map_is_waited_for_and_its_crash_frees_the_lock(tmp_path, counted_fits):
    calls, gate = counted_fits
    gate.set()
    vectors, _ = clustered()
    ids = np.arange(len(vectors))
    key = key_of(ids, vectors)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), key, "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        waiting = projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors)
        until(lambda: projection_jobs.status(key).elsewhere)
        assert "another dashboard process" in projection_jobs.status(key).text and calls == []
        assert holder.wait(timeout=60) == 9  # crashed while holding the lock
        assert projection_jobs.wait(waiting.key, timeout=60)  # this process then fitted the map itself
    finally:
        holder.kill()
    assert calls == ["pca"]
    assert projection_jobs.request(tmp_path, "m", PCA, ids=ids, vectors=vectors).state == "ready"


FITTER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from raiox_core import projection_cache, projection_jobs
    fits = []
    real = projection_cache.project
    projection_cache.project = lambda *a, **k: fits.append(1) or real(*a, **k)
    from raiox_core.projection import ProjectionParams
    vectors = np.load(sys.argv[2])
    ids = np.arange(len(vectors))
    params = ProjectionParams(method="pca")
    first = projection_jobs.request(sys.argv[1], "m", params, ids=ids, vectors=vectors)
    projection_jobs.wait(first.key, timeout=120)
    found = projection_jobs.request(sys.argv[1], "m", params, ids=ids, vectors=vectors)
    print(json.dumps({"state": found.state, "fits": len(fits)}))
""")


def test_two_processes_asking_at_once_fit_the_map_once(tmp_path):
    vectors, _ = clustered(per=200, dim=64)
    np.save(tmp_path / "v.npy", vectors)
    cache = tmp_path / "maps"
    procs = [subprocess.Popen([sys.executable, "-c", FITTER, str(cache), str(tmp_path / "v.npy")],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300)[0] for p in procs]
    import json
    found = [json.loads(r) for r in results]
    assert [f["state"] for f in found] == ["ready", "ready"]
    assert sorted(f["fits"] for f in found) == [0, 1]  # one fitted; the other waited and read the saved map


def test_a_umap_map_reporting_epochs_is_saved_and_found_after_a_restart(tmp_path, monkeypatch):
    """The real fit: epoch progress reaches the job, and the reducer (which held the progress file) pickles."""
    from raiox_core.numba_cache import configure_numba_cache

    reported: list[str] = []  # every report, not only those a poll happens to see (a small fit is quick)
    real_report = projection_jobs._Job.report
    monkeypatch.setattr(projection_jobs._Job, "report",
                        lambda job, fraction, text: (reported.append(text), real_report(job, fraction, text)))

    configure_numba_cache()
    vectors, _ = clustered(per=20)
    ids = np.arange(len(vectors))
    params = ProjectionParams()
    first = projection_jobs.request(tmp_path, "m", params, ids=ids, vectors=vectors)
    projection_jobs.wait(first.key, timeout=120)
    assert projection_jobs.status(first.key) is None, projection_jobs._jobs[first.key].error
    assert any(t.startswith("Fitting UMAP: epoch ") for t in reported), reported
    projection_cache.clear_memory_cache()
    projection_jobs.forget_jobs()
    again = projection_jobs.request(tmp_path, "m", params, ids=ids, vectors=vectors)
    assert again.state == "ready" and again.projection.source == "disk" and again.projection.method == "umap"
    assert again.projection.transform(vectors[:1]).shape == (1, 2)
