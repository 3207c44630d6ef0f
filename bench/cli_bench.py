"""(i) One image through `raiox match` as a user runs it from the shell: process start-up, imports, model load,
the embedded PostgreSQL's start and stop, the answer; from an empty cache dir (cold), from the cache `raiox demo`
leaves (the first match after it: the int8 check is read, the ready-made tower is built) and with the tower
stored (warm: every later match)."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .env import BenchEnv


def _raiox(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one `raiox` command, run as `python -m raiox_core.cli` (what the entry point runs);
    CPU is the child's user + system time, the steadier figure on a machine that other jobs share."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "raiox_core.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"raiox {args[0]} exited {done.returncode}: {' | '.join(done.stderr.strip().splitlines()[-3:])}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _summary(runs: list[tuple[float, float]]) -> dict:
    walls = [w for w, _ in runs]
    return {"median_s": round(statistics.median(walls), 2), "min_s": round(min(walls), 2),
            "max_s": round(max(walls), 2), "runs_s": [round(w, 2) for w in walls],
            "cpu_median_s": round(statistics.median(c for _, c in runs), 2)}


def run(env: BenchEnv, query_png: bytes, runs: int) -> dict:
    """Seed a fresh data dir with `raiox demo --no-app`, then time `raiox match` on one image `runs` times each
    with an empty cache dir (cold), a copy of the demo's (first match after the demo) and the cache one match
    filled (warm), alternating, and `raiox stats` (no model); the 1-minute load average before each round."""
    root = env.root / "cli"
    root.mkdir(parents=True)
    query = root / "query.png"
    query.write_bytes(query_png)
    demo_cache, warm_cache = root / "cache-demo", root / "cache-warm"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAIOX_")}
    base.update(RAIOX_DATA_DIR=str(root / "data"), RAIOX_MODEL=env.settings.model, RAIOX_PRETRAINED=env.settings.pretrained,
                RAIOX_PRECISION=env.settings.precision, RAIOX_DEVICE="cpu", HF_HUB_OFFLINE="1")
    seed_s, _ = _raiox(["demo", "--no-app"], {**base, "RAIOX_CACHE_DIR": str(demo_cache)}, root)
    shutil.copytree(demo_cache, warm_cache)
    _raiox(["match", str(query)], {**base, "RAIOX_CACHE_DIR": str(warm_cache)}, root)  # stores the ready-made tower
    cold, after_demo, warm, stats, loads = [], [], [], [], []
    for i in range(runs):  # alternating: all see the same machine state (the VM drifts within minutes)
        loads.append(os.getloadavg()[0])
        cold.append(_raiox(["match", str(query)], {**base, "RAIOX_CACHE_DIR": str(root / f"cache-cold-{i}")}, root))
        first = shutil.copytree(demo_cache, root / f"cache-after-demo-{i}")
        after_demo.append(_raiox(["match", str(query)], {**base, "RAIOX_CACHE_DIR": str(first)}, root))
        warm.append(_raiox(["match", str(query)], {**base, "RAIOX_CACHE_DIR": str(warm_cache)}, root))
        stats.append(_raiox(["stats", "--json"], {**base, "RAIOX_CACHE_DIR": str(warm_cache)}, root))
    return {"runs": runs, "cold": _summary(cold), "first_after_demo": _summary(after_demo), "warm": _summary(warm),
            "no_model": _summary(stats), "load_1min": [round(v, 2) for v in loads], "seed_s": round(seed_s, 1),
            "embedded_postgres": "started and stopped by each command (nothing else uses that data dir)",
            "weights": env.settings.pretrained}
