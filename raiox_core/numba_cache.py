"""Where numba keeps the code it compiles for umap and pynndescent, so that a new process reuses it.

Importing umap compiles pynndescent's kernels: about 30 s without a cache, 6 s from one. numba reads
NUMBA_CACHE_DIR when it is imported, so the entry points (the CLI, the dashboard, the bench's probes)
call `configure_numba_cache` at start-up, before anything imports umap; library code never sets it.

umap's own kernels (the exact neighbours of a small set, smooth_knn_dist, the layout's epochs, a
query's placement) are jitted without numba's cache, so every new process compiled them again: about 9 s
before a 500-point map could be fitted, and 3.5 s more before a query was placed on it (2-core Intel Xeon
VM, 2026-12-03). `cache_umap_kernels` gives them the cache before their first call.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_kernels_cached = False


def numba_cache_dir() -> Path:
    """$NUMBA_CACHE_DIR when set, else a per-user directory: $XDG_CACHE_HOME/raiox/numba (~/.cache/...)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "raiox" / "numba"


def configure_numba_cache() -> None:
    """Point numba at the writable per-user directory unless NUMBA_CACHE_DIR is already set.

    Sets the variable for this process and the processes it starts. Where the directory cannot be
    created, nothing is set and numba uses its default (__pycache__ next to the compiled sources).
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    path = numba_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    os.environ["NUMBA_CACHE_DIR"] = str(path)


def umap_kernels() -> list:
    """The numba-jitted functions of the umap and pynndescent modules imported so far (one may be listed
    under several modules that import it)."""
    from numba.core.registry import CPUDispatcher

    return [value for name, module in list(sys.modules.items())
            if module is not None and (name == "umap" or name.startswith(("umap.", "pynndescent")))
            for value in list(vars(module).values()) if isinstance(value, CPUDispatcher)]


def cache_umap_kernels() -> None:
    """Let numba cache every jitted function of umap and pynndescent that it would compile afresh in each
    process (once per process; call it after importing umap and before fitting or transforming).

    numba keeps a cached function per source file, signature and CPU under NUMBA_CACHE_DIR (or next to
    the sources), as it does for the functions their authors marked cache=True; `enable_caching` is the
    switch those use. A kernel numba cannot cache is compiled as before, with a NumbaWarning.
    """
    global _kernels_cached
    if _kernels_cached:
        return
    from numba.core.caching import NullCache

    for kernel in umap_kernels():
        if isinstance(kernel._cache, NullCache):
            kernel.enable_caching()
    _kernels_cached = True
