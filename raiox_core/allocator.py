"""glibc malloc tuning for the CPU encoder: freed activation memory stays in the process for reuse.

A batch allocates and frees megabyte-sized tensors by the hundred. By default glibc hands such blocks
back to the kernel (mmap above a threshold it adapts as it goes, heap trimming above another), and the
next batch faults every page back in, zeroed by the kernel: 300-4,400 page faults per ingested image
in the pipeline, 0-1 with the thresholds below (bench/README.md). PyTorch's tuning guide suggests
jemalloc or tcmalloc for the same reason; mallopt needs no preload and applies to the running process.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
MMAP_THRESHOLD = 64 << 20  # blocks below this come from the heap, not fresh mmaps
TRIM_THRESHOLD = 128 << 20  # free memory kept at the top of each heap before it is handed back
_USER_TUNED = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Raise both thresholds for the process (again on each model load: harmless); False where there is
    no glibc or the user tuned malloc.

    Both are set together: setting either one alone turns off glibc's adaptive threshold, and then
    (measured) every block above the default 128 kB is mapped or trimmed afresh: far more faults.
    """
    if any(name in os.environ for name in _USER_TUNED):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs on
    except (OSError, AttributeError):
        return False
    applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not applied:
        log.info("malloc thresholds not changed: this C library refused them.")
    return applied
