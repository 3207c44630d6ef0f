"""Subprocess of the explorer bench at 10k and 100k: the page's first view, its UMAP in the background, a rerun.

Run as `python -m bench.explorer_scale_probe N CACHE_DIR [MODEL_ID]` (RAIOX_DATABASE_URL set with MODEL_ID: the
stored vectors; without: N clustered synthetic vectors, bench/data.py, so no database load is needed). Times,
as one JSON line: the first view (PCA preview fitted, a stratified sample of the map, the figure serialised; the
UMAP job started), UMAP cold (from the request to the map saved, in the background thread), and a rerun once
the map is ready (the map from memory, the sample, the figure).
"""

from __future__ import annotations

import json
import os
import sys
import time


def _figure_json(df, cap: int) -> tuple[int, float]:
    import plotly.express as px

    from raiox_core.sampling import stratified_sample

    rows = stratified_sample((df["manufacturer"] + "\x1f" + df["model"]).tolist(), cap)
    shown = df.iloc[rows]
    figure = px.scatter(shown, x="x", y="y", color="manufacturer", symbol="model", hover_data=["id", "diameter"],
                        render_mode="webgl")
    return len(shown), len(figure.to_json()) / 2**20


def main(n: int, cache_dir: str, embedding_model: str | None = None, cap: int = 20_000) -> dict:
    started = time.perf_counter()
    import numpy as np
    import pandas as pd

    from raiox_core import process, projection_jobs
    from raiox_core.projection import ProjectionParams, projection_frame
    from raiox_core.projection_cache import cached_projection

    process.configure()
    if embedding_model:
        from raiox_core.db import Database

        db = Database(os.environ["RAIOX_DATABASE_URL"], description="bench", max_size=2)
        rows = db.embeddings(embedding_model)[:n]
        db.close()
        labels = pd.DataFrame([{k: r[k] for k in ("id", "manufacturer", "model", "diameter_mm")} for r in rows])
        vectors = np.stack([r["embedding"] for r in rows])
    else:
        from bench import data

        made = data.labels(n, 7)
        vectors = data.ClusterModel.make(7).sample(made.model, 8)
        labels = pd.DataFrame({"id": np.arange(1, n + 1), "manufacturer": made.manufacturer.astype(str),
                               "model": made.model.astype(str), "diameter_mm": made.diameter})
    ids = labels["id"].to_numpy()
    ready = time.perf_counter()

    umap = ProjectionParams()  # the page's defaults
    job = projection_jobs.request(cache_dir, embedding_model or "bench/synthetic", umap, ids=ids, vectors=vectors)
    requested = time.perf_counter()
    preview = cached_projection(cache_dir, embedding_model or "bench/synthetic", ids=ids, vectors=vectors,
                                params=ProjectionParams(method="pca"))
    shown, mb = _figure_json(projection_frame(preview, labels), cap)
    first_view = time.perf_counter()
    projection_jobs.wait(job.key, timeout=1800)
    umap_done = time.perf_counter()
    after = projection_jobs.request(cache_dir, embedding_model or "bench/synthetic", umap, ids=ids, vectors=vectors)
    if after.state != "ready":
        raise RuntimeError(f"the UMAP map is {after.state}: {after.error}")
    shown_after, mb_after = _figure_json(projection_frame(after.projection, labels), cap)
    rerun = time.perf_counter()
    return {
        "points": n, "source": "database" if embedding_model else "synthetic clustered vectors (no database fetch)",
        "first_state": job.state, "preview_source": preview.source, "umap_source": after.projection.source,
        "setup_s": round(ready - started, 2), "request_s": round(requested - ready, 3),
        "first_view_s": round(first_view - ready, 2), "umap_cold_s": round(umap_done - ready, 1),
        "umap_fit_s": round(after.projection.seconds, 1), "rerun_s": round(rerun - umap_done, 2),
        "points_drawn": shown_after, "figure_json_mb": round(mb_after, 2), "load_1min": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)))
