"""Where numba keeps the code it compiles for umap and pynndescent, so that a new process reuses it.

Importing umap compiles pynndescent's kernels: about 30 s without a cache, 6 s from one. numba reads
NUMBA_CACHE_DIR when it is imported, so the entry points (the CLI, the dashboard, the bench's probes)
call `configure_numba_cache` at start-up, before anything imports umap; library code never sets it.
"""

from __future__ import annotations

import os
from pathlib import Path


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
