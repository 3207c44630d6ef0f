"""(i) One image through `raiox match` as a user runs it from the shell: process start-up, imports, model load,
the embedded PostgreSQL's start and stop, the answer; with an empty and with a filled int8 check cache."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .env import BenchEnv


def _raiox(args: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one `raiox` command (run as `python -m raiox_core.cli`, what the entry point runs)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "raiox_core.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"raiox {args[0]} exited {done.returncode}: {' | '.join(done.stderr.strip().splitlines()[-3:])}")
    return wall


def _summary(seconds: list[float]) -> dict:
    return {"median_s": round(statistics.median(seconds), 2), "min_s": round(min(seconds), 2),
            "max_s": round(max(seconds), 2), "runs_s": [round(s, 2) for s in seconds]}


def run(env: BenchEnv, query_png: bytes, runs: int) -> dict:
    """Seed a fresh data dir with `raiox demo --no-app`, then time `raiox match` on one image `runs` times with
    an empty int8 cache (cold) and with the one the demo filled (warm), alternating, and `raiox stats` (no model)."""
    root = env.root / "cli"
    root.mkdir(parents=True)
    query = root / "query.png"
    query.write_bytes(query_png)
    warm_cache = root / "cache-warm"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAIOX_")}
    base.update(RAIOX_DATA_DIR=str(root / "data"), RAIOX_MODEL=env.settings.model, RAIOX_PRETRAINED=env.settings.pretrained,
                RAIOX_PRECISION=env.settings.precision, RAIOX_DEVICE="cpu", HF_HUB_OFFLINE="1")
    seed_s = _raiox(["demo", "--no-app"], {**base, "RAIOX_CACHE_DIR": str(warm_cache)}, root)  # fills the warm cache
    cold, warm, stats = [], [], []
    for i in range(runs):  # alternating: both see the same machine state (the VM drifts within minutes)
        cold.append(_raiox(["match", str(query)], {**base, "RAIOX_CACHE_DIR": str(root / f"cache-cold-{i}")}, root))
        warm.append(_raiox(["match", str(query)], {**base, "RAIOX_CACHE_DIR": str(warm_cache)}, root))
        stats.append(_raiox(["stats", "--json"], {**base, "RAIOX_CACHE_DIR": str(warm_cache)}, root))
    return {"runs": runs, "cold": _summary(cold), "warm": _summary(warm), "no_model": _summary(stats),
            "seed_s": round(seed_s, 1), "embedded_postgres": "started and stopped by each command (nothing else uses "
            "that data dir)", "weights": env.settings.pretrained}
