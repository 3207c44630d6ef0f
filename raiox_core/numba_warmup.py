"""Compile umap's numba kernels into numba's cache once per machine, in the background, before anyone asks
for a map.

What numba can keep between processes is what importing umap compiles: pynndescent's kernels and umap's
`rdist`. A first 10k map in a new process took 20.5 s with numba's cache empty and 10.6 s after this
warm-up (bench (e), 2-core Intel Xeon VM, 2026-12-03); umap's other kernels are compiled in every
process, whatever is done here. The dashboard
starts this warm-up when it starts (`start_in_background`): a niced child process imports umap and
leaves a marker named after the versions and the CPU, so later starts skip it. `RAIOX_NUMBA_WARMUP=off`
turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .cpu import model_name, vector_flags
from .numba_cache import numba_cache_dir
from .projection_cache import installed_version

log = logging.getLogger(__name__)
STALE_LOCK_S = 900.0  # a warm-up that has held its lock this long died: another may start
_started = False


def marker_path() -> Path:
    """The file a finished warm-up leaves. numba keeps its code per source file (so per environment: a new
    virtual environment compiles afresh), library version and CPU; so does the marker."""
    key = "|".join([sys.prefix, sys.version.split()[0],
                    *(installed_version(p) for p in ("numba", "umap-learn", "pynndescent")), model_name(), *vector_flags()])
    return numba_cache_dir() / f"raiox-warm-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _running(lock: Path) -> bool:
    """Whether the warm-up that holds the lock still runs: its pid is alive, or it started too recently
    to have written the pid."""
    try:
        text, age = lock.read_text().strip(), time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if not text.isdigit():
        return age < STALE_LOCK_S
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return age < STALE_LOCK_S


def _take_lock(lock: Path) -> bool:
    """Create the lock file, or take over one left by a warm-up that died; False while one runs."""
    if _running(lock):
        return False
    lock.unlink(missing_ok=True)
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:  # another process took it between the two calls
        return False
    return True


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
        marker.parent.mkdir(parents=True, exist_ok=True)
        lock = marker.with_suffix(".running")
        if not _take_lock(lock):
            return None
        with open(marker.with_suffix(".log"), "wb") as out:
            child = subprocess.Popen([sys.executable, "-m", __name__, str(marker), str(lock)], stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        lock.write_text(str(child.pid))
    except OSError as exc:  # a read-only cache directory: the first map compiles, as it would without this
        log.info("numba warm-up not started: %s", exc)
        return None
    threading.Thread(target=child.wait, name="numba-warmup-reaper", daemon=True).start()  # no zombie left
    return child


def warm() -> None:
    """Import umap: that compiles (and caches) every kernel numba keeps for the explorer. A fit adds none
    (tests/core/test_numba_warmup.py checks that a map fitted afterwards adds nothing to the cache)."""
    import umap  # noqa: F401


def _stop_with(parent: int, lock: Path) -> None:
    """End this process (lock removed) once the dashboard that started it is gone: an orphaned warm-up
    would compile on for a server that no longer runs."""
    while os.getppid() == parent:
        time.sleep(1.0)
    lock.unlink(missing_ok=True)
    os._exit(1)


def main(marker: str, lock: str) -> None:
    from . import process

    process.configure()  # NUMBA_CACHE_DIR, as the dashboard set it (inherited) or the default
    os.nice(19)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` removes the lock
    threading.Thread(target=_stop_with, args=(os.getppid(), Path(lock)), daemon=True).start()
    try:
        started = time.perf_counter()
        warm()
        Path(marker).write_text(f"warmed in {time.perf_counter() - started:.1f} s\n")
    finally:
        Path(lock).unlink(missing_ok=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
