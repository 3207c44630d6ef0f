"""Cluster quality of the references: cohesion, separation, silhouette and leave-one-out k-NN accuracy.

Everything is computed from one pass over the cosine similarity matrix, in row chunks so memory stays
bounded (about 128 MB per chunk whatever the set size): per row, the sum of similarities to each class
gives cohesion, separation and silhouette; the row's top-k gives the leave-one-out neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import InvalidInput, TooFewReferences
from .grouping import best_per_row, unit_rows

TOP_K = 5
CHUNK_BYTES = 128 * 1024 * 1024


@dataclass
class Evaluation:
    """The tables of `evaluate`; every one is a pandas DataFrame except `overall`."""

    by_manufacturer: pd.DataFrame  # one row per manufacturer
    by_model: pd.DataFrame  # one row per manufacturer + model
    confusion_manufacturer: pd.DataFrame  # counts, index = true manufacturer, columns = predicted (LOO top-1)
    confusion_model: pd.DataFrame  # the same over "manufacturer model" labels
    predictions: pd.DataFrame  # one row per reference: its nearest other reference and whether it agrees
    overall: dict  # references, manufacturers, models, and the four accuracies over all references



def _chunk_rows(n: int, chunk_rows: int | None) -> int:
    if chunk_rows:
        return max(1, chunk_rows)
    return max(1, min(n, CHUNK_BYTES // (4 * max(n, 1))))


@dataclass
class _ClassStats:
    """Per-reference quantities for one labelling (manufacturer or model)."""

    codes: np.ndarray  # (n,) class index of each reference
    names: np.ndarray  # (C,) class names, sorted
    cohesion: np.ndarray  # (n,) mean cosine distance to the other members of its class (NaN if alone)
    separation: np.ndarray  # (n,) mean cosine distance to the references of all other classes
    silhouette: np.ndarray  # (n,) silhouette with cosine distance, 0 for a class of one (sklearn's rule)


def _encode(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    names, codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int64), names


def _finish(codes: np.ndarray, names: np.ndarray, class_sums: np.ndarray, self_sim: np.ndarray) -> _ClassStats:
    """Turn per-row sums of similarity to each class into cohesion, separation and silhouette.

    Silhouette is computed here from the same sums rather than by sklearn's silhouette_samples, which
    would make a second n x n pass; the definition is the same (a = mean distance to the own class
    without the point itself, b = smallest mean distance to another class, s = (b - a) / max(a, b),
    s = 0 for classes of one), and the tests check it against sklearn.
    """
    n = len(codes)
    counts = np.bincount(codes, minlength=len(names)).astype(np.float64)
    rows = np.arange(n)
    own_count = counts[codes]
    own_sum = class_sums[rows, codes] - self_sim
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(own_count > 1, 1.0 - own_sum / (own_count - 1), np.nan)
        others = n - own_count
        separation = np.where(others > 0, 1.0 - (class_sums.sum(axis=1) - class_sums[rows, codes]) / others, np.nan)
        mean_dist = 1.0 - class_sums / counts[None, :]
    mean_dist[rows, codes] = np.inf
    b = mean_dist.min(axis=1) if len(names) > 1 else np.full(n, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (b - a) / np.maximum(a, b)
    s = np.where(own_count > 1, np.nan_to_num(s, nan=0.0), 0.0)
    if len(names) < 2:
        s = np.full(n, np.nan)
    return _ClassStats(codes, names, a, separation, s)


def evaluate(
    vectors: np.ndarray,
    manufacturers: Sequence[str],
    models: Sequence[str],
    ids: Sequence[int] | None = None,
    *,
    k: int = TOP_K,
    chunk_rows: int | None = None,
) -> Evaluation:
    """Cluster quality and leave-one-out k-NN accuracy of labelled vectors, by cosine similarity.

    For every reference, the other references are ranked by cosine similarity (the reference itself
    is left out, as if it were an unknown query searched against all the others):

    - top-1 accuracy: the share of references whose single nearest other reference has the same label;
    - top-5 accuracy (top-`k`): the share whose label appears among the labels of its 5 nearest other
      references (any position; not a vote), or of all the others when there are fewer than 5.

    Both are reported at two levels: manufacturer, and model (the label "manufacturer model"). A class
    with a single reference can never be found this way and counts as a miss.

    Cohesion is the mean cosine distance (1 - cosine similarity) between members of a class, separation
    the mean cosine distance from its members to every reference of the other classes, silhouette the
    per-class mean of the cosine silhouette (-1..1, higher is better separated). In `by_manufacturer`
    these are computed over manufacturer labels; in `by_model` over model labels (so separation there
    includes the other models of the same manufacturer).

    The confusion matrices count the LOO top-1 predictions: rows are the true labels, columns the
    predicted ones, both over every label. Raises TooFewReferences for fewer than 2 vectors.
    """
    x = unit_rows(np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1))
    n = len(x)
    if n < 2:
        raise TooFewReferences("Evaluation needs at least 2 references.")
    if len(manufacturers) != n or len(models) != n:
        raise InvalidInput("The vectors, manufacturers and models given must have the same length.")
    ids_arr = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    manufacturers = np.asarray(manufacturers, dtype=object).astype(str)
    labels = np.array([f"{m} {mo}" for m, mo in zip(manufacturers, models)], dtype=object)
    man_codes, man_names = _encode(manufacturers)
    lab_codes, lab_names = _encode(labels)
    man_onehot = np.zeros((n, len(man_names)), dtype=np.float32)
    man_onehot[np.arange(n), man_codes] = 1.0
    lab_onehot = np.zeros((n, len(lab_names)), dtype=np.float32)
    lab_onehot[np.arange(n), lab_codes] = 1.0

    kk = min(k, n - 1)
    man_sums = np.empty((n, len(man_names)), dtype=np.float64)
    lab_sums = np.empty((n, len(lab_names)), dtype=np.float64)
    self_sim = np.empty(n, dtype=np.float64)
    neighbours = np.empty((n, kk), dtype=np.int64)
    neighbour_sims = np.empty((n, kk), dtype=np.float32)
    step = _chunk_rows(n, chunk_rows)
    for start in range(0, n, step):
        stop = min(n, start + step)
        sims = x[start:stop] @ x.T  # (chunk, n)
        man_sums[start:stop] = sims @ man_onehot
        lab_sums[start:stop] = sims @ lab_onehot
        local = np.arange(stop - start)
        self_sim[start:stop] = sims[local, local + start]
        sims[local, local + start] = -np.inf  # leave one out
        # kk <= n - 1, so the -inf self never makes it
        neighbours[start:stop], neighbour_sims[start:stop] = best_per_row(sims, kk)

    man_stats = _finish(man_codes, man_names, man_sums, self_sim)
    lab_stats = _finish(lab_codes, lab_names, lab_sums, self_sim)

    nearest = neighbours[:, 0]
    top1_man = man_codes[nearest] == man_codes
    top1_lab = lab_codes[nearest] == lab_codes
    topk_man = (man_codes[neighbours] == man_codes[:, None]).any(axis=1)
    topk_lab = (lab_codes[neighbours] == lab_codes[:, None]).any(axis=1)

    predictions = pd.DataFrame({
        "id": ids_arr,
        "manufacturer": manufacturers,
        "model": np.asarray(models, dtype=object).astype(str),
        "label": labels,
        "nearest_id": ids_arr[nearest],
        "predicted_manufacturer": man_names[man_codes[nearest]],
        "predicted_label": lab_names[lab_codes[nearest]],
        "similarity": neighbour_sims[:, 0].astype(np.float64),
        "top1_manufacturer": top1_man,
        f"top{k}_manufacturer": topk_man,
        "top1_model": top1_lab,
        f"top{k}_model": topk_lab,
        "silhouette": man_stats.silhouette,
    })

    per_ref = pd.DataFrame({
        "manufacturer": manufacturers, "label": labels,
        "m_cohesion": man_stats.cohesion, "m_separation": man_stats.separation, "m_silhouette": man_stats.silhouette,
        "l_cohesion": lab_stats.cohesion, "l_separation": lab_stats.separation, "l_silhouette": lab_stats.silhouette,
        "top1": top1_man, "topk": topk_man, "top1_model": top1_lab, "topk_model": topk_lab,
    })
    by_manufacturer = (
        per_ref.groupby("manufacturer", sort=True)
        .agg(references=("label", "size"), models=("label", "nunique"), cohesion=("m_cohesion", "mean"),
             separation=("m_separation", "mean"), silhouette=("m_silhouette", "mean"), top1=("top1", "mean"),
             topk=("topk", "mean"), top1_model=("top1_model", "mean"), topk_model=("topk_model", "mean"))
        .reset_index()
        .rename(columns={"topk": f"top{k}", "topk_model": f"top{k}_model"})
    )
    by_model = (
        per_ref.groupby("label", sort=True)
        .agg(manufacturer=("manufacturer", "first"), references=("label", "size"), cohesion=("l_cohesion", "mean"),
             separation=("l_separation", "mean"), silhouette=("l_silhouette", "mean"), top1=("top1_model", "mean"),
             topk=("topk_model", "mean"))
        .reset_index()
        .rename(columns={"topk": f"top{k}"})
    )
    by_model.insert(2, "model", [label[len(m) + 1:] for label, m in zip(by_model["label"], by_model["manufacturer"])])

    return Evaluation(
        by_manufacturer=by_manufacturer,
        by_model=by_model,
        confusion_manufacturer=_confusion(manufacturers, predictions["predicted_manufacturer"], man_names),
        confusion_model=_confusion(labels, predictions["predicted_label"], lab_names),
        predictions=predictions,
        overall={
            "references": n, "manufacturers": len(man_names), "models": len(lab_names), "k": k,
            "top1_manufacturer": float(top1_man.mean()), f"top{k}_manufacturer": float(topk_man.mean()),
            "top1_model": float(top1_lab.mean()), f"top{k}_model": float(topk_lab.mean()),
            "silhouette_manufacturer": float(np.nanmean(man_stats.silhouette)) if len(man_names) > 1 else float("nan"),
        },
    )


def _confusion(true: Sequence[str], predicted: Sequence[str], names: np.ndarray) -> pd.DataFrame:
    """Square count matrix over every label, rows true and columns predicted."""
    table = pd.crosstab(pd.Series(np.asarray(true), name="true"), pd.Series(np.asarray(predicted), name="predicted"))
    return table.reindex(index=list(names), columns=list(names), fill_value=0).astype(int)


def evaluate_rows(rows: Sequence[dict], **kwargs) -> Evaluation:
    """`evaluate` over rows as returned by Database.embeddings (id, manufacturer, model, embedding)."""
    if len(rows) < 2:
        raise TooFewReferences("Evaluation needs at least 2 references.")
    vectors = np.stack([r["embedding"] for r in rows])
    return evaluate(vectors, [r["manufacturer"] for r in rows], [r["model"] for r in rows], [r["id"] for r in rows],
                    **kwargs)
