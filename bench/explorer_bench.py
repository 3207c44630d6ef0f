"""(e) Explorer: UMAP map of the small reference set, cold (fresh process, numba compiling), after the
dashboard's numba warm-up, and warm (cached)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from .env import BenchEnv
from .references import ReferenceSets
from .subproc import run_probe


def run(env: BenchEnv, sets: ReferenceSets, cold_numba: bool, scales: tuple[str, ...] = ("small", "large")) -> dict:
    """Two fresh processes on the same projection cache: the first fits and saves, the second loads.

    cold_numba: give the first process an empty NUMBA_CACHE_DIR, so numba compiles everything (a true
    first start); otherwise it shares the user's numba cache (the quick run, to stay short).
    """
    embedding_model = sets.embedding_models["small"]
    cache_dir = str(env.root / "projections")
    probe_env = {"RAIOX_DATABASE_URL": env.settings.database_url}
    cold_env = dict(probe_env)
    if cold_numba:
        cold_env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="raiox-bench-numba-", dir=env.root)
    cold_wall, cold = run_probe("bench.explorer_probe", [embedding_model, cache_dir], cold_env, timeout_s=900)
    warm_wall, warm = run_probe("bench.explorer_probe", [embedding_model, cache_dir], probe_env, timeout_s=300)
    after = _after_warmup(env, embedding_model, probe_env, cold_numba)
    if cold["source"] != "computed" or warm["source"] != "disk" or after["source"] != "computed":
        raise RuntimeError(f"unexpected cache behaviour: cold {cold['source']}, warm {warm['source']}, "
                           f"after the warm-up {after['source']}")
    scale = {}
    for key in scales:  # 10k and 100k in a full run: first view, UMAP in the background, rerun
        model = sets.embedding_models[key]
        numba = {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="raiox-bench-numba-", dir=env.root)} if cold_numba else {}
        _, scale[str(sets.size(key))] = run_probe(
            "bench.explorer_scale_probe", [str(sets.size(key)), tempfile.mkdtemp(prefix="maps-", dir=env.root), model],
            {**probe_env, **numba}, timeout_s=1800)
    return {
        "scale": scale,
        "points": cold["points"], "method": "UMAP 2-D, n_neighbors 15, min_dist 0.1, cosine (the page's default)",
        "numba_cache": "empty (true cold start)" if cold_numba else "shared with the user (not a cold compile)",
        "cold": {"process_s": round(cold_wall, 2), **cold},
        "after_warmup": after,
        "warm": {"process_s": round(warm_wall, 2), **warm},
        "cold_s": round(cold_wall, 2), "after_warmup_s": after["process_s"], "warm_s": warm["view_s"],
        "warm_render_s": warm["frame_and_figure_s"],
    }


def _after_warmup(env: BenchEnv, embedding_model: str, probe_env: dict, cold_numba: bool) -> dict:
    """The first map of a dashboard whose start-up warm-up (raiox_core.numba_warmup) has run: the warm-up
    on an empty numba cache (or the user's, in a quick run), then a fresh process that fits the map."""
    numba = {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="raiox-bench-numba-", dir=env.root)} if cold_numba else {}
    marker = tempfile.mkdtemp(prefix="warm-", dir=env.root)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "raiox_core.numba_warmup", f"{marker}/done"],
                   env={**os.environ, **numba}, check=True, capture_output=True, timeout=900)
    warmup_s = time.perf_counter() - start
    maps = tempfile.mkdtemp(prefix="maps-", dir=env.root)
    wall, probe = run_probe("bench.explorer_probe", [embedding_model, maps], {**probe_env, **numba}, timeout_s=900)
    return {"warmup_s": round(warmup_s, 2), "process_s": round(wall, 2), **probe}
