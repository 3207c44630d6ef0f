"""Reference sets for the search, match, explorer and memory sections, loaded by binary COPY.

One set of fully labelled reference rows (ids 1..n_large) carries three vector partitions, each its own
embedding_model with its own HNSW index, built after loading (then ANALYZE), as a bulk import should be:
- the loaded model's id over all rows ("clustered" vectors): what match_bytes searches at n_large;
- `<model id>#<n_small>` over the first n_small rows (the same vectors): match and explorer at n_small;
- "bench/uniform" over all rows (random directions): the worst case for recall;
- "bench/cone" and "bench/radiographs" over all rows: the hard narrow cone and copies of the loaded model's
  vectors of rendered radiographs (bench/data.py), for the search section's recall on several distributions.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from raiox_core import db as dbmod

from . import data
from .env import BenchEnv

UNIFORM_MODEL_ID, CONE_MODEL_ID, RADIOGRAPHS_MODEL_ID = "bench/uniform", "bench/cone", "bench/radiographs"


@dataclass
class ReferenceSets:
    n_small: int
    n_large: int
    labels: data.Labels
    clusters: data.ClusterModel
    cone: data.Cone
    radiograph_bases: np.ndarray  # the loaded model's vectors of rendered radiographs (copies of them are stored)
    embedding_models: dict[str, str]  # "small" / "large" / "uniform" -> embedding_model
    vectors: dict[str, np.ndarray]  # the same keys -> (n, 512) as stored
    figures: dict = field(default_factory=dict)

    def size(self, key: str) -> int:
        return len(self.vectors[key])


def radiograph_vectors(env: BenchEnv, n: int, seed: int = 3) -> np.ndarray:
    """The loaded model's vectors of n rendered synthetic radiographs."""
    return env.embedder.encode([Image.open(io.BytesIO(png)) for _, png in data.radiographs(n, seed=seed)])


def load(env: BenchEnv, n_small: int, n_large: int, n_radiographs: int = 0,
         kinds: tuple[str, ...] = ("uniform", "cone", "radiographs"), seed: int = 7) -> ReferenceSets:
    """Generate, COPY and index the small and large partitions and those of `kinds` (radiographs only with
    n_radiographs images to copy); times each step."""
    env.reset()
    labels = data.labels(n_large, seed)
    clusters, cone = data.ClusterModel.make(seed), data.Cone.make(seed)
    bases = radiograph_vectors(env, n_radiographs) if n_radiographs else np.empty((0, data.DIM), np.float32)
    clustered = clusters.sample(labels.model, seed + 1)
    embedding_model = env.embedder.embedding_model
    sets = ReferenceSets(
        n_small, n_large, labels, clusters, cone, bases,
        embedding_models={"small": f"{embedding_model}#{n_small}", "large": embedding_model, "uniform": UNIFORM_MODEL_ID,
                          "cone": CONE_MODEL_ID, "radiographs": RADIOGRAPHS_MODEL_ID},
        vectors={"small": clustered[:n_small], "large": clustered},
    )
    makers = {"uniform": lambda: data.uniform(n_large, seed + 2), "cone": lambda: cone.sample(n_large, seed + 3),
              "radiographs": lambda: data.perturbed_copies(bases, n_large, seed + 4)}
    sets.vectors.update({kind: makers[kind]() for kind in kinds if kind != "radiographs" or n_radiographs})
    ids = np.arange(1, n_large + 1)
    sets.figures.update(hnsw_m=dbmod.HNSW_M, hnsw_ef_construction=dbmod.HNSW_EF_CONSTRUCTION)
    start = time.perf_counter()
    env.copy_references(labels)
    sets.figures["copy_references_s"] = round(time.perf_counter() - start, 2)
    for key in sets.vectors:
        start = time.perf_counter()
        env.copy_vectors(sets.embedding_models[key], ids[: sets.size(key)], sets.vectors[key])
        copied = time.perf_counter() - start
        built = env.build_index(sets.embedding_models[key], data.DIM)
        sets.figures[key] = {"vectors": sets.size(key), "kind": "clustered" if key in ("small", "large") else key,
                             "copy_s": round(copied, 2), "copy_rows_per_s": round(sets.size(key) / copied),
                             "hnsw_build_s": round(built, 2)}
        sets.figures[key]["hnsw_index_mb"] = _index_mb(env, sets.embedding_models[key])
    with env.db.connection() as conn:
        table = conn.execute("SELECT pg_total_relation_size('embeddings')").fetchone()[0]
    sets.figures["embeddings_table_mb"] = round(table / 2**20, 1)  # heap, TOAST and every index (HNSW too), all partitions
    return sets


def _index_mb(env: BenchEnv, embedding_model: str) -> float:
    """Size of the model's partial HNSW index (found by the embedding_model literal in its predicate)."""
    with env.db.connection() as conn:
        (size,) = conn.execute(
            "SELECT sum(pg_relation_size(format('%%I', indexname)::regclass)) FROM pg_indexes"
            " WHERE tablename = 'embeddings' AND indexdef ILIKE '%% hnsw %%' AND indexdef LIKE %s",
            (f"%'{embedding_model}'%",)).fetchone()
    return round(float(size or 0) / 2**20, 1)
