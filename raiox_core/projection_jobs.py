"""Maps fitted in the background: one fit per map, however many sessions and processes ask for it.

A UMAP map of 10k references takes tens of seconds to fit (a minute when numba compiles first), which a page
must not wait for. `request` answers at once: the cached map when there is one (`projection_cache`, so a
restart finds it), otherwise the progress of the fit, which it starts in a thread of this process if none
runs yet. Threads of one process share a job per map key; processes sharing a cache directory take a file
lock per map (`.<key>.lock`, flock: the kernel releases it when its holder dies, so a crash never leaves a
map locked), and the holder writes its progress beside it (`.<key>.progress.json`) for the others to show.
Names starting with a dot are left alone by the cache's pruning.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import RaioxError, TooFewReferences
from .files import atomic_file
from .projection import Projection, ProjectionParams
from .projection_cache import fingerprint, fit_and_save, in_id_order, lookup

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a process waiting for another's fit looks at the lock and the progress file


@dataclass(frozen=True)
class JobStatus:
    """Where one map stands. `state`: "ready" (projection set), "running" or "failed" (error set)."""

    key: str
    state: str
    fraction: float = 0.0
    text: str = ""
    projection: Projection | None = None
    error: str | None = None
    elsewhere: bool = False  # the fit runs in another process sharing the cache directory


def _clamped(fraction: float) -> float:
    return min(max(float(fraction), 0.0), 1.0)


class _Job:
    """One fit's progress, written by its thread and read by any session's."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.fraction, self.text = 0.0, "Waiting to start…"
        self.error: str | None = None
        self.elsewhere = False
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def report(self, fraction: float, text: str) -> None:
        self.fraction, self.text = _clamped(fraction), text

    def status(self) -> JobStatus:
        if self.error is not None:
            return JobStatus(self.key, "failed", self.fraction, self.text, error=self.error)
        return JobStatus(self.key, "running", self.fraction, self.text, elsewhere=self.elsewhere)


_jobs: dict[str, _Job] = {}
_jobs_lock = threading.Lock()


def request(cache_dir: Path | str, embedding_model: str, params: ProjectionParams, *, ids: Sequence[int],
            vectors: np.ndarray) -> JobStatus:
    """The cached map of these vectors, or the state of its fit, started now in the background if needed.

    Never waits for a fit. A failed fit stays failed (its error shown) until `retry` is called for its
    key, so a page that polls does not start a doomed fit again every second.
    """
    if len(ids) == 0:
        raise TooFewReferences(f"There are no reference vectors of {embedding_model} to project.")
    ids_arr, x = in_id_order(ids, vectors)
    key = fingerprint(embedding_model, ids_arr, x, params)
    with _jobs_lock:
        job = _jobs.get(key)
        if job is not None and not job.done.is_set():
            return job.status()
        if job is not None and job.error is not None:
            return job.status()
    if (found := lookup(cache_dir, key)) is not None:
        return JobStatus(key, "ready", 1.0, "", projection=found)
    with _jobs_lock:
        job = _jobs.get(key)
        if job is None or (job.done.is_set() and job.error is None):  # none yet, or a finished map since pruned
            job = _jobs[key] = _Job(key)
            job.thread = threading.Thread(target=_run, args=(job, Path(cache_dir), ids_arr, x, params),
                                          name=f"raiox-map-{key[:8]}", daemon=True)
            job.thread.start()
        return job.status()


def status(key: str) -> JobStatus | None:
    """This process's job for `key` as it stands, without looking at the vectors again (a page's poll);
    None when no job of this process has that key (or it finished: the map is then in the cache)."""
    with _jobs_lock:
        job = _jobs.get(key)
    if job is None or (job.done.is_set() and job.error is None):
        return None
    return job.status()


def retry(key: str) -> None:
    """Forget a failed fit, so that the next `request` for its map starts it again."""
    with _jobs_lock:
        job = _jobs.get(key)
        if job is not None and job.done.is_set():
            del _jobs[key]


def wait(key: str, timeout: float | None = None) -> bool:
    """Block until this process's job for `key` has finished (True) or `timeout` passed (False); True when
    there is no such job. For tests and scripts: pages poll `request` instead."""
    with _jobs_lock:
        job = _jobs.get(key)
    return job is None or job.done.wait(timeout)


def forget_jobs() -> None:
    """Drop finished jobs' records (tests: a "restart" of the process; running fits go on)."""
    with _jobs_lock:
        for key in [k for k, j in _jobs.items() if j.done.is_set()]:
            del _jobs[key]


def _lock_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f".{key}.lock"


def _progress_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f".{key}.progress.json"


@contextmanager
def map_lock(cache_dir: Path, key: str, blocking: bool = True) -> Iterator[bool]:
    """Hold the per-map file lock; yields False at once when not `blocking` and another process holds it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(_lock_path(cache_dir, key), "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(job: _Job, cache_dir: Path, ids: np.ndarray, x: np.ndarray, params: ProjectionParams) -> None:
    try:
        _fit_once(job, cache_dir, ids, x, params)
    except (RaioxError, OSError, ValueError, MemoryError) as exc:  # a user-readable sentence, shown by the page
        log.warning("The %s map %s could not be fitted: %s", params.method, job.key[:12], exc)
        job.error = str(exc) or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a thread's exception would vanish; the page must say the map failed
        log.exception("The %s map %s failed", params.method, job.key[:12])
        job.error = f"The map could not be computed ({type(exc).__name__}: {exc})."
    finally:
        job.done.set()


def _fit_once(job: _Job, cache_dir: Path, ids: np.ndarray, x: np.ndarray, params: ProjectionParams) -> None:
    """Fit and save the map unless another process does: then follow its progress file until its lock is
    free, and take over if it left no map (it failed or died)."""
    while True:
        with map_lock(cache_dir, job.key, blocking=False) as owned:
            if owned:
                job.elsewhere = False
                if lookup(cache_dir, job.key) is None:  # another process may have saved it before we got the lock
                    progress_file = _progress_path(cache_dir, job.key)

                    def report(fraction: float, text: str) -> None:
                        # The file first: whoever reads this text in memory then finds it in the file too.
                        _write_progress(progress_file, _clamped(fraction), text)
                        job.report(fraction, text)

                    try:
                        fit_and_save(cache_dir, job.key, ids, x, params, report)
                    finally:
                        progress_file.unlink(missing_ok=True)
                return
        fraction, text = _read_progress(_progress_path(cache_dir, job.key))
        job.report(fraction, f"{text} (in another dashboard process)" if text else
                   "Being computed by another dashboard process…")
        job.elsewhere = True  # after the text, so that a reader never sees the flag beside "Waiting to start…"
        time.sleep(POLL_S)


def _write_progress(path: Path, fraction: float, text: str) -> None:
    try:
        with atomic_file(path) as f:
            f.write(json.dumps({"fraction": fraction, "text": text, "pid": os.getpid()}).encode())
    except OSError as exc:  # other processes then show a generic message: not worth failing the fit
        log.debug("Could not write the map's progress to %s: %s", path, exc)


def _read_progress(path: Path) -> tuple[float, str]:
    try:
        found = json.loads(path.read_text())
        return float(found["fraction"]), str(found["text"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0, ""
