"""(h) `raiox train`: grouped 5-fold cross-validation of the adapter plus the final fit, at 1k and 10k references.

The vectors are the bench's "clustered" set (bench/data.py) with 8 shared label-free directions added (a strong
nuisance, as exposure or projection angle would be), so that the run is one where adoption is at stake. The
database's share (reading the vectors, writing the adapted ones with one binary COPY) is left out: (g) times
COPY at these sizes.
"""

from __future__ import annotations

import time

import numpy as np

from raiox_core import adapter
from raiox_core import vote_accuracy as va
from raiox_core.grouping import groups, unit_rows

from . import data

NUISANCE_DIRECTIONS = 8
NUISANCE_SCALE = 0.6


def vectors(n: int, seed: int = 0) -> tuple[np.ndarray, va.Labels]:
    """n labelled 512-d vectors: clustered by model, plus label-free variation shared by every model."""
    labels = data.labels(n, seed)
    x = data.ClusterModel.make(seed).sample(labels.model, seed + 1)
    rng = np.random.default_rng(seed + 2)
    directions = np.linalg.qr(rng.standard_normal((x.shape[1], NUISANCE_DIRECTIONS)))[0].T
    x = x + NUISANCE_SCALE * rng.standard_normal((n, NUISANCE_DIRECTIONS)).astype(np.float32) @ directions
    names = np.array(data.MANUFACTURERS)[labels.manufacturer]
    return unit_rows(x), va.Labels.of(names, [f"M{m}" for m in labels.model], labels.diameter)


def run(sizes: tuple[int, ...]) -> dict:
    """Seconds of cross-validation and of the final fit per size, with what the rule decided."""
    out = {}
    for n in sizes:
        x, labels = vectors(n)
        start = time.perf_counter()
        group_of = groups(x)
        report = adapter.cross_validate(x, labels, group_of, "bench/base")
        cv_s = time.perf_counter() - start
        start = time.perf_counter()
        adapter.fit(x, labels, group_of, "bench/base")
        fit_s = time.perf_counter() - start
        out[str(n)] = {"references": n, "dim": int(x.shape[1]), "cross_validation_s": round(cv_s, 2),
                       "final_fit_s": round(fit_s, 2), "total_s": round(cv_s + fit_s, 2),
                       "steps": adapter.FitParams().steps, "adopt": report["adopt"],
                       "frozen_top1_model": report["frozen"]["top1_model"]["value"],
                       "adapted_top1_model": report["adapted"]["top1_model"]["value"],
                       "improvement_top1_model": report["improvement"]["top1_model"]}
    return out
