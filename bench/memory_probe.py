"""Subprocess of the memory bench: a process holding what the dashboard holds, reporting its peak RSS.

Run as `python -m bench.memory_probe QUERY_DIR MATCHES` with the RAIOX_* variables of the bench. It
builds the app's resources the way app/resources.py does (settings, database pool, storage, model),
imports what the pages import, runs matches, lists references and loads the explorer's matrix of every
reference vector, then prints VmHWM (peak resident memory) at each step as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from raiox_core.images import ImageLimits


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _mark(marks: dict, name: str) -> None:
    marks[name] = {"rss_mb": round(_status_kb("VmRSS") / 1024, 1), "peak_mb": round(_status_kb("VmHWM") / 1024, 1)}


def main(query_dir: str, matches: int, explorer: bool = True) -> dict:
    marks: dict = {}
    _mark(marks, "python")
    import numpy as np
    import pandas  # noqa: F401  the pages import these
    import plotly.express  # noqa: F401
    import streamlit  # noqa: F401

    from raiox_core.config import Settings
    from raiox_core.db import open_database
    from raiox_core.embedder import load_from_settings
    from raiox_core.match import match_bytes
    from raiox_core.storage import open_storage

    _mark(marks, "imports")
    settings = Settings.from_env()
    db, storage = open_database(settings), open_storage(settings)
    embedder = load_from_settings(settings)
    _mark(marks, "model_loaded")
    queries = sorted(Path(query_dir).glob("*.png"))
    for i in range(matches):
        match_bytes(queries[i % len(queries)].read_bytes(), db=db, embedder=embedder,
                    threshold=settings.match_threshold, limits=ImageLimits())
    db.stats()
    db.list(limit=100)
    _mark(marks, "after_matches")
    references = db.count()
    if explorer:
        rows = db.embeddings(embedder.embedding_model)  # the explorer's data: every reference with its vector
        matrix = np.stack([r["embedding"] for r in rows])
        _mark(marks, "explorer_matrix")
        del rows, matrix
    db.close()
    return {"references": references, "matches": matches, "storage": storage.description.split(":")[0],
            "marks": marks, "peak_mb": marks["explorer_matrix" if explorer else "after_matches"]["peak_mb"],
            "peak_serving_mb": marks["after_matches"]["peak_mb"]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), explorer=sys.argv[3:] != ["no-explorer"])))
