"""The environment of a Raiox subprocess in a test: none of the caller's RAIOX_* settings, but the run's shared caches."""

from __future__ import annotations

import os

# Set by tests/conftest.py for the whole run: what a model load remembers (the int8 check's verdict) does
# not depend on the data dir, and sharing it spares each subprocess its ~5 s check; no dashboard starts
# the background numba warm-up.
SHARED = ("RAIOX_CACHE_DIR", "RAIOX_NUMBA_WARMUP")


def subprocess_env() -> dict[str, str]:
    """os.environ without RAIOX_* variables except the shared caches; the caller adds its own settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAIOX_") or k in SHARED}
