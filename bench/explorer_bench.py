"""(e) Explorer: UMAP map of the small reference set, cold (fresh process, numba compiling) and warm (cached)."""

from __future__ import annotations

import tempfile

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
    if cold["source"] != "computed" or warm["source"] != "disk":
        raise RuntimeError(f"unexpected cache behaviour: cold {cold['source']}, warm {warm['source']}")
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
        "warm": {"process_s": round(warm_wall, 2), **warm},
        "cold_s": round(cold_wall, 2), "warm_s": warm["view_s"], "warm_render_s": warm["frame_and_figure_s"],
    }
