"""Compile umap's numba kernels into numba's cache once per machine, in the background, before anyone asks
for a map.

Importing umap compiles pynndescent's kernels; a map and a query's placement compile umap's own, which
`numba_cache.cache_umap_kernels` lets numba keep too. The warm-up does all three: it imports umap, then
fits a small map on each of the explorer's two exact-neighbour paths (under 4,096 references umap's own,
above it Raiox's) and places a query on each, so that a first map in a new process only loads compiled
code. Above 30,000 references pynndescent's search compiles the rest on the first such map, and keeps it.
A first 10k map in a new process took 20.5 s with numba's cache empty and 10.6 s after the import-only
warm-up of before (bench (e), 2-core Intel Xeon VM, 2026-12-03). The dashboard starts this warm-up when
it starts (`start_in_background`): a niced child process compiles and leaves a marker named after the
versions and the CPU, so later starts skip it. `RAIOX_NUMBA_WARMUP=off` turns it off.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .cpu import model_name, vector_flags
from .numba_cache import numba_cache_dir
from .projection_cache import installed_version

log = logging.getLogger(__name__)
_started = False


def marker_path() -> Path:
    """The file a finished warm-up leaves. numba keeps its code per source file (so per environment: a new
    virtual environment compiles afresh), library version and CPU; so does the marker."""
    key = "|".join([sys.prefix, sys.version.split()[0],
                    *(installed_version(p) for p in ("numba", "umap-learn", "pynndescent")), model_name(), *vector_flags()])
    return numba_cache_dir() / f"raiox-warm-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def start_in_background(enabled: bool = True) -> subprocess.Popen | None:
    """Start the warm-up child once per process unless it is off, done already, or running elsewhere.

    Returns the child (None when nothing was started). The child runs at the lowest CPU priority, so on
    two cores it takes what the dashboard leaves; its output goes to a log beside the marker. It stays in
    the dashboard's process group: Ctrl-C in the terminal stops both.
    """
    global _started
    if _started or not enabled:
        return None
    _started = True
    marker = marker_path()
    if marker.exists():
        return None
    try:
        return _spawn_holding_the_lock(marker)
    except OSError as exc:  # a read-only cache directory, no process to be had: the first map compiles, as without this
        log.info("numba warm-up not started: %s", exc)
        return None


def _spawn_holding_the_lock(marker: Path) -> subprocess.Popen | None:
    """The warm-up child, given the marker's lock; None when another process holds that lock (one is running)."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(marker.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            # The child inherits the locked file (flock belongs to the open file, as projection_jobs' map locks
            # do): it is held while the warm-up runs, by whatever process, and freed when it ends, however.
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        with open(marker.with_suffix(".log"), "wb") as out:
            child = subprocess.Popen([sys.executable, "-m", __name__, str(marker)], stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(lock,))
    finally:
        os.close(lock)  # not an unlock: the child's copy keeps the lock
    threading.Thread(target=child.wait, name="numba-warmup-reaper", daemon=True).start()  # no zombie left
    return child


WARM_MAPS = (500, 4_096)  # references: umap's own exact neighbours (below 4,096), then the ones Raiox gives it


def warm() -> None:
    """Compile, into numba's cache, what the explorer's maps and placements compile (tests/core/
    test_numba_warmup.py checks that a new process then fits a map and places a query without compiling)."""
    import numpy as np

    from .projection import project

    rng = np.random.default_rng(0)
    for n in WARM_MAPS:
        x = rng.standard_normal((n, 512)).astype(np.float32)
        project(x).transform(x[:1])


def main(marker: str) -> None:
    from . import process

    process.configure()  # NUMBA_CACHE_DIR, as the dashboard set it (inherited) or the default
    os.nice(19)
    started = time.perf_counter()
    warm()
    Path(marker).write_text(f"warmed in {time.perf_counter() - started:.1f} s\n")


if __name__ == "__main__":
    main(sys.argv[1])
