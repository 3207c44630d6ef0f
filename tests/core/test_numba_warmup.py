"""The numba warm-up the dashboard starts: a child process that compiles into numba's cache what the
explorer's first map and a query's placement can take from it, once per machine, so they do not wait."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import textwrap

import pytest

from raiox_core import numba_warmup
from raiox_core.config import Settings

# A new process, as a restarted dashboard is: the explorer's paths under 4096 references (umap's exact
# neighbours) and for 4096-30k (Raiox's), each with a query placed on the map. It prints the functions of
# umap and pynndescent that numba compiled after umap's import rather than loaded from its cache (the
# import itself compiles two tiny ones eagerly, from their explicit signatures, before any cache can be set).
FIT_A_MAP = textwrap.dedent("""
    from raiox_core import process
    process.configure()
    import numpy as np
    import umap
    from raiox_core.numba_cache import umap_kernels
    from raiox_core.projection import project

    def misses():
        return {k: sum(k.stats.cache_misses.values()) for k in set(umap_kernels())}

    imported = misses()
    rng = np.random.default_rng(1)
    for n in (300, 5000):
        x = rng.standard_normal((n, 512)).astype(np.float32)
        project(x).transform(x[:1])
    print(sorted(k.py_func.__qualname__ for k, n in misses().items() if n > imported.get(k, 0)))
""")


def compiled(cache) -> set[str]:
    """numba's compiled-code files (one per function and type signature) under the cache directory."""
    return {str(p.relative_to(cache)) for p in cache.rglob("*.nbc")}


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty numba cache for this process and its children, and a process that has not started a warm-up."""
    cache = tmp_path / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    monkeypatch.setattr(numba_warmup, "_started", False)
    return cache


@pytest.mark.slow
def test_the_warm_up_compiles_all_a_first_map_needs_once(fresh):
    child = numba_warmup.start_in_background()
    assert child is not None
    assert numba_warmup.start_in_background() is None  # once per process
    assert child.wait(timeout=600) == 0, numba_warmup.marker_path().with_suffix(".log").read_text()
    marker = numba_warmup.marker_path()
    assert marker.read_text().startswith("warmed in ")
    before = compiled(fresh)
    assert any(f.startswith("umap_") for f in before) and any(f.startswith("pynndescent_") for f in before)

    fitted = subprocess.run([sys.executable, "-c", FIT_A_MAP], check=True, timeout=600, capture_output=True, text=True)
    assert fitted.stdout.strip() == "[]"  # every kernel the maps and placements ran was loaded, none compiled
    assert compiled(fresh) == before  # so nothing was added to the cache

    again = subprocess.run([sys.executable, "-c", "from raiox_core import numba_warmup as w; print(w.start_in_background())"],
                           capture_output=True, text=True, timeout=120)
    assert again.stdout.strip() == "None"  # a later start finds the marker


def test_a_running_warm_up_is_not_doubled_and_one_that_died_leaves_no_lock(fresh):
    fresh.mkdir()
    with open(numba_warmup.marker_path().with_suffix(".lock"), "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process's warm-up, running
        assert numba_warmup.start_in_background() is None

    numba_warmup._started = False
    child = numba_warmup.start_in_background()
    assert child is not None
    numba_warmup._started = False
    assert numba_warmup.start_in_background() is None  # the child holds the lock it inherited
    child.kill()  # dies without a word: the lock goes with it
    child.wait(timeout=60)
    numba_warmup._started = False
    again = numba_warmup.start_in_background()
    try:
        assert again is not None
    finally:
        again.kill()
        again.wait(timeout=60)
    assert not numba_warmup.marker_path().exists()  # a warm-up that did not finish leaves no marker


def test_the_warm_up_can_be_turned_off(fresh):
    assert Settings.from_env({"RAIOX_NUMBA_WARMUP": "off"}).numba_warmup is False
    assert Settings.from_env({}).numba_warmup is True
    assert numba_warmup.start_in_background(enabled=False) is None
    assert not fresh.exists()


def test_another_environment_warms_its_own_cache(fresh, monkeypatch):
    here = numba_warmup.marker_path()
    monkeypatch.setattr(sys, "prefix", "/opt/another-venv")  # numba keys its code by source path: compiled afresh
    assert numba_warmup.marker_path() != here and numba_warmup.marker_path().parent == here.parent
