"""Small timing helpers: latency summaries, repeated calls, the load average."""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np


def summarize(seconds: Sequence[float]) -> dict:
    """p50/p95/mean/min/max in milliseconds of a list of durations in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if not len(ms):
        return {"n": 0}
    return {
        "n": int(len(ms)),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def repeat(fn: Callable[[], object], times: int, warmup: int = 1) -> list[float]:
    """Durations of `times` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(times):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def loadavg() -> float:
    """The 1-minute load average: other work on this machine skews every figure, so it is recorded."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return math.nan
