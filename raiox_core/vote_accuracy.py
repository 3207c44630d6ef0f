"""How often /match's vote is right, measured on the labelled references themselves: each query is answered
from a gallery that holds none of its group (leave-one-group-out, or a cross-validation fold), by the same
neighbours, weights and confidence as /match, with 95% intervals from a bootstrap over groups."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grouping import best_per_row, unit_rows
from .match import VOTE_POOL, vote_weights

LEVELS = ("manufacturer", "model", "model_diameter")
TOP_K = (1, 5)
BOOTSTRAP = 1000
THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.01), 2)
_CHUNK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Labels:
    """Class codes of each reference at each level (manufacturer; manufacturer + model; + diameter)."""

    manufacturer: np.ndarray
    model: np.ndarray
    model_diameter: np.ndarray
    manufacturers: np.ndarray  # the names behind the manufacturer codes

    @classmethod
    def of(cls, manufacturers, models, diameters) -> Labels:
        def codes(values) -> tuple[np.ndarray, np.ndarray]:
            names, coded = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
            return coded.astype(np.int64), names

        man, man_names = codes(manufacturers)
        model, _ = codes([f"{m}\x1f{mo}" for m, mo in zip(manufacturers, models)])
        full, _ = codes([f"{m}\x1f{mo}\x1f{float(d):g}" for m, mo, d in zip(manufacturers, models, diameters)])
        return cls(man, model, full, man_names)

    def level(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def take(self, rows: np.ndarray) -> Labels:
        return Labels(self.manufacturer[rows], self.model[rows], self.model_diameter[rows], self.manufacturers)


@dataclass(frozen=True)
class Outcomes:
    """Per query: the rank of its true class in each level's vote (0 = the leading answer; a class with no
    vote at all ranks after every voted one), and the confidence /match would state."""

    ranks: dict[str, np.ndarray]
    confidence: np.ndarray  # the leading share of the vote the confidence rests on
    confident_right: np.ndarray  # the answer that confidence certifies is the true one
    basis: str | None  # "manufacturer", "model", or None (the set holds one model: nothing can be confident)


def _basis(labels: Labels) -> str | None:
    """confidence_for's rule over the whole set: which vote was not decided before the search."""
    if len(np.unique(labels.manufacturer)) > 1:
        return "manufacturer"
    return "model" if len(np.unique(labels.model)) > 1 else None


def _neighbours(q: np.ndarray, g: np.ndarray, q_groups: np.ndarray | None, g_groups: np.ndarray | None,
                pool: int) -> tuple[np.ndarray, np.ndarray]:
    """The `pool` most similar gallery rows of each query (indices, similarities, best first), never one of the
    query's own group; -inf similarity where the gallery has fewer."""
    pool = min(pool, len(g))
    index = np.zeros((len(q), pool), dtype=np.int64)
    sims_out = np.full((len(q), pool), -np.inf, dtype=np.float32)
    step = max(1, min(len(q), _CHUNK_BYTES // (4 * max(len(g), 1))))
    for start in range(0, len(q), step):
        sims = q[start:start + step] @ g.T
        if q_groups is not None:
            sims[q_groups[start:start + step, None] == g_groups[None, :]] = -np.inf
        index[start:start + step], sims_out[start:start + step] = best_per_row(sims, pool)
    return index, sims_out


def _shares(weights: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """(queries, classes) vote shares from each neighbour's weight and class."""
    shares = np.zeros((len(weights), n_classes), dtype=np.float64)
    np.add.at(shares, (np.repeat(np.arange(len(weights)), weights.shape[1]), classes.ravel()), weights.ravel())
    return shares


def outcomes(queries: np.ndarray, query_labels: Labels, gallery: np.ndarray, gallery_labels: Labels, *,
             query_groups: np.ndarray | None = None, gallery_groups: np.ndarray | None = None,
             basis: str | None = "infer") -> Outcomes:
    """Answer every query from the gallery as /match would (VOTE_POOL neighbours, the softmax vote); with
    groups, a gallery row of the query's own group is never a neighbour."""
    q, g = unit_rows(queries), unit_rows(gallery)
    index, sims = _neighbours(q, g, query_groups, gallery_groups, VOTE_POOL)
    weights = vote_weights(sims.astype(np.float64))
    weights[~np.isfinite(sims)] = 0.0
    if basis == "infer":
        basis = _basis(gallery_labels)
    ranks, leading = {}, {}
    for level in LEVELS:
        truth, classes = query_labels.level(level), gallery_labels.level(level)
        n_classes = int(max(truth.max(initial=0), classes.max(initial=0))) + 1
        shares = _shares(weights, classes[index], n_classes)
        true_share = shares[np.arange(len(q)), truth]
        # Ahead of the truth: classes with a larger share, and voted classes of equal share listed before it
        # (/match orders equal shares by label; codes are sorted labels). An unvoted truth ranks last.
        ahead = (shares > true_share[:, None]).sum(axis=1)
        ties = ((shares == true_share[:, None]) & (np.arange(n_classes)[None, :] < truth[:, None])).sum(axis=1)
        ranks[level] = np.where(true_share > 0, ahead + ties, n_classes)
        leading[level] = shares.max(axis=1)
    if basis is None:
        confidence, right = leading["model"], np.zeros(len(q), dtype=bool)
    else:
        confidence, right = leading[basis], ranks[basis] == 0
    return Outcomes(ranks, confidence, right & (confidence > 0), basis)


def bootstrap_counts(n_groups: int, seed: int = 0) -> np.ndarray:
    """(draws, groups): how often each group is drawn in each bootstrap resample of the groups, shared by every
    figure of one report. Fewer draws for very many groups, to bound memory (draws x groups x 4 bytes)."""
    draws = BOOTSTRAP if n_groups <= 20_000 else 200
    picks = np.random.default_rng(seed).integers(0, n_groups, size=(draws, n_groups))
    flat = (np.arange(draws)[:, None] * n_groups + picks).ravel()
    return np.bincount(flat, minlength=draws * n_groups).reshape(draws, n_groups).astype(np.float32)


def interval(hits: np.ndarray, groups: np.ndarray, counts: np.ndarray, rows: np.ndarray | None = None) -> dict:
    """{"value", "low", "high"}: the share of hits (among `rows`, a boolean mask) and its 95% percentile
    interval over the bootstrap resamples of groups in `counts`. `hits` may also be numbers (e.g. paired
    differences of hits): then the mean and its interval."""
    rows = np.ones(len(hits), dtype=bool) if rows is None else rows
    per_group_hits = np.bincount(groups, weights=np.where(rows, hits, 0).astype(np.float64), minlength=counts.shape[1])
    per_group_n = np.bincount(groups, weights=rows.astype(np.float64), minlength=counts.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = (counts @ per_group_hits) / (counts @ per_group_n)
    low, high = np.nanpercentile(shares, [2.5, 97.5]) if np.isfinite(shares).any() else (np.nan, np.nan)
    value = float(hits[rows].mean()) if rows.any() else float("nan")
    return {"value": round(value, 4), "low": round(float(low), 4), "high": round(float(high), 4)}


def accuracy(out: Outcomes, groups: np.ndarray, counts: np.ndarray, rows: np.ndarray | None = None) -> dict:
    """top-1 and top-5 per level, each {"value", "low", "high"}."""
    return {f"top{k}_{level}": interval(out.ranks[level] < k, groups, counts, rows) for level in LEVELS for k in TOP_K}


def precision_coverage(out: Outcomes) -> list[dict]:
    """For each threshold: the share of queries answered confidently, and the share of those that are right."""
    curve = []
    for t in THRESHOLDS:
        answered = (out.confidence >= t) if out.basis is not None else np.zeros(len(out.confidence), dtype=bool)
        n = int(answered.sum())
        curve.append({"threshold": float(t), "coverage": round(n / max(len(answered), 1), 4), "answered": n,
                      "precision": round(float(out.confident_right[answered].mean()), 4) if n else None})
    return curve


def threshold_for(curve: list[dict], target: float) -> float | None:
    """The lowest threshold from which on every threshold that answers anything reaches `target` precision,
    or None: a threshold whose precision dips below it at a higher cut is not trusted."""
    chosen = None
    for point in reversed(curve):
        if point["precision"] is None:
            continue
        if point["precision"] < target:
            break
        chosen = point["threshold"]
    return chosen
