"""Subprocess of the explorer bench: what the explorer page does on a view, timed, printed as one JSON line.

Run as `python -m bench.explorer_probe MODEL_ID CACHE_DIR` with RAIOX_DATABASE_URL set. A fresh process
makes the first call honest: a cold start includes importing umap and (with an empty NUMBA_CACHE_DIR)
numba's compilation; a warm start finds the fitted map in CACHE_DIR and reads its coordinates only (the
reducer, and with it umap, is loaded when a query is placed, which a view does not do): `umap_imported`
says whether umap was imported by the time the figure was built.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(embedding_model: str, cache_dir: str) -> dict:
    started = time.perf_counter()
    import numpy as np
    import plotly.express as px

    from raiox_core import process
    from raiox_core.db import Database
    from raiox_core.projection import ProjectionParams, projection_frame
    from raiox_core.projection_cache import cached_projection

    process.configure()  # as the dashboard does at start-up; an empty NUMBA_CACHE_DIR given makes a cold start

    imported = time.perf_counter()
    db = Database(os.environ["RAIOX_DATABASE_URL"], description="bench", max_size=2)
    rows = db.embeddings(embedding_model)
    ids = [r["id"] for r in rows]
    vectors = np.stack([r["embedding"] for r in rows])
    fetched = time.perf_counter()
    projection = cached_projection(cache_dir, embedding_model, ids=ids, vectors=vectors, params=ProjectionParams())
    projected = time.perf_counter()
    frame = projection_frame(projection, rows)
    figure = px.scatter(frame, x="x", y="y", color="manufacturer", symbol="model", hover_data=["id", "diameter"])
    payload = figure.to_json()  # what Streamlit serialises and sends to the browser
    rendered = time.perf_counter()
    umap_imported = "umap" in sys.modules  # a warm view reads coordinates only; the reducer waits for a query
    again = cached_projection(cache_dir, embedding_model, ids=ids, vectors=vectors, params=ProjectionParams())
    memory_s = time.perf_counter() - rendered
    db.close()
    return {
        "points": len(ids), "source": projection.source, "second_call_source": again.source,
        "imports_s": round(imported - started, 3), "fetch_rows_s": round(fetched - imported, 3),
        "projection_s": round(projected - fetched, 3), "fit_s": round(projection.seconds, 3),
        "frame_and_figure_s": round(rendered - projected, 3), "figure_json_mb": round(len(payload) / 2**20, 2),
        "memory_cache_s": round(memory_s, 4), "view_s": round(rendered - imported, 3),
        "umap_imported": umap_imported,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
