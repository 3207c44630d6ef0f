"""The recall probe: how many of the true nearest references the HNSW index finds, measured on the stored
vectors themselves, and the smallest ef_search that reaches the target (RAIOX_TARGET_RECALL).

A missed true neighbour is a wrong identification, and how many the index misses at a given ef_search
depends on the data (clustered radiograph embeddings in a narrow cone are much harder than random ones),
so it is measured per index instead of assumed. Queries are sampled stored vectors moved a little off
themselves (cosine ~0.95 to the original, as a new X-ray of a known implant would be: a stored vector is
a node of the graph, and searching for a node flatters recall), searched exactly (a full scan) and through
the index at each ef_search of LADDER. An ef_search passes when the lower end of a one-sided 95% confidence
interval of its recall (bootstrap over the queries) reaches the target, and searches then use MARGIN times it.

Why the margin: such queries start near a node of the graph, which fresh draws from the same distribution do
not. On 100k clustered vectors (bench (c)) the probe's queries found 98-99.8% at ef_search 40, fresh ones
97.1% there, 98.5% at 60 and 99.1% at 100; queries moved further off (to their data's nearest-neighbour
distance) were instead too pessimistic (98.5% only at 300), so the easy queries are kept with a margin.
The gap grows with the set: on 1M clustered vectors the probe passed at 60 where fresh queries found 96.1%
at 100 and 99.4% at 200, so the margin of 2 first chosen (120) gave 97.2%; 3 gives 180 there. Another
build of that index never let fresh queries pass 98% (README, "Search recall you can state"): the probe
then chooses exact scans, which no margin replaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from psycopg.types.json import Jsonb

from .db import EXACT_SEARCH_MAX_ROWS, Database

LADDER = (40, 60, 80, 100, 150, 200, 300, 400, 600, 800, 1000)
SAMPLES, K = 200, 10
MARGIN = 3  # searches use this many times the ef_search that passed (see the module's docstring)
CONFIDENCE, RESAMPLES = 0.95, 2000  # the recall an ef_search must reach with this confidence, and how it is estimated
OFFSET = 0.33  # length of the random unit step added to a stored unit vector: cosine ~0.95 to it
STALE_CHANGE = 0.2  # re-measure once the model's vector count has changed by more than this share


@dataclass(frozen=True)
class Tuning:
    embedding_model: str
    ef_search: int | None  # None with exact
    exact: bool
    recall: float
    target: float
    samples: int
    vectors: int
    ladder: list[dict]
    measured_at: datetime | None = None
    index_type: str = "vector"  # the index it was measured on (RAIOX_INDEX_TYPE)
    recall_low: float | None = None  # lower end of the 95% interval of `recall` (None: an older probe's choice)

    @classmethod
    def from_row(cls, row: dict) -> Tuning:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})

    @property
    def passed(self) -> int | None:
        """The smallest ef_search that reached the target (the last one the probe tried), or None with exact."""
        return None if self.exact or not self.ladder else self.ladder[-1]["ef_search"]

    def describe(self) -> str:
        passed = self.passed or self.ef_search
        margin = f" ({self.ef_search // passed}x the {passed} that passed)" if passed and passed != self.ef_search else ""
        how = ("exact scans" if self.exact else f"ef_search {self.ef_search}{margin}") \
            + (f" ({self.index_type} index)" if self.index_type != "vector" else "")
        small = " (a set this small is scanned exactly)" if self.exact and self.vectors <= EXACT_SEARCH_MAX_ROWS else ""
        when = f", measured {self.measured_at:%Y-%m-%d}" if self.measured_at else ""
        low = f", 95% at least {self.recall_low:.3f}" if self.recall_low is not None and not self.exact else ""
        return (f"{how}{small}: recall@{K} {self.recall:.3f}{low} (target {self.target:g}) on {self.samples} sampled "
                f"of {self.vectors:,} vectors{when}{self._shortfall()}")

    def _shortfall(self) -> str:
        """Why an index's searches scan exactly: the best the graph did (a plateau as ef_search grows means
        references its searches cannot reach, which a larger ef_search does not mend; a rebuild may)."""
        if not (self.exact and self.ladder):
            return ""
        best = max(self.ladder, key=lambda p: p["recall"])
        return (f"; the index found at most {best['recall']:.3f} (ef_search {best['ef_search']}, "
                f"{self.ladder[-1]['recall']:.3f} at {self.ladder[-1]['ef_search']})")

    def stale(self, vectors: int, target: float, index_type: str = "vector") -> bool:
        return (self.target != target or self.index_type != index_type or self.recall_low is None
                or self._below_margin() or abs(vectors - self.vectors) > STALE_CHANGE * max(self.vectors, 1))

    def _below_margin(self) -> bool:
        """Chosen by an earlier Raiox with a smaller MARGIN (2 until the 1M measurement)."""
        return self.passed is not None and self.ef_search < min(self.passed * MARGIN, LADDER[-1])


def _ids(rows: list[dict]) -> set[int]:
    return {r["id"] for r in rows}


def lower_bound(per_query: np.ndarray, seed: int = 0) -> float:
    """One-sided lower confidence bound of the mean of per-query recalls, by bootstrap over the queries (a
    query's misses come together, so its neighbours are not independent trials)."""
    rng = np.random.default_rng(seed)
    means = per_query[rng.integers(0, len(per_query), (RESAMPLES, len(per_query)))].mean(axis=1)
    return float(np.quantile(means, 1 - CONFIDENCE))


def _queries(stored: list[tuple[int, np.ndarray]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _, v in stored:
        step = rng.standard_normal(len(v))
        q = v / np.linalg.norm(v) + OFFSET * step / np.linalg.norm(step)
        out.append((q / np.linalg.norm(q)).astype(np.float32))
    return out


def probe(db: Database, embedding_model: str, target: float, *, samples: int = SAMPLES,
          exact_below: int = EXACT_SEARCH_MAX_ROWS) -> Tuning:
    """Measure recall@10 per ef_search and record the smallest whose recall reaches `target` with 95%
    confidence (or exact scans, when none does or the set has at most `exact_below` vectors: a scan of that
    few is as fast as the index)."""
    (count,) = db.query("vector-count", {"embedding_model": embedding_model})
    vectors = int(count["n"])
    ladder: list[dict] = []
    chosen, recall, low, exact = None, 1.0, 1.0, True
    queries = _queries(db.sample_vectors(embedding_model, samples)) if vectors > exact_below else []
    if queries:
        truth = [_ids(db.search(q, embedding_model, k=K, exact=True)) for q in queries]

        def per_query(ef: int) -> np.ndarray:
            return np.array([len(t & _ids(db.search(q, embedding_model, k=K, ef_search=ef))) / max(len(t), 1)
                             for q, t in zip(queries, truth)])

        for ef in LADDER:
            found = per_query(ef)
            measured, bound = float(found.mean()), lower_bound(found)
            ladder.append({"ef_search": ef, "recall": round(measured, 4), "recall_low": round(bound, 4)})
            if bound >= target:
                chosen, exact = min(ef * MARGIN, LADDER[-1]), False
                found = found if chosen == ef else per_query(chosen)  # the recall searches will have
                recall, low = float(found.mean()), lower_bound(found)
                break
        # else: exact scans from now on, recall 1.0
    tuning = Tuning(embedding_model, chosen, exact, round(recall, 4), target, len(queries), vectors, ladder,
                    index_type=db.index_type, recall_low=round(low, 4))
    db.query("save-search-tuning", {**tuning.__dict__, "ladder": Jsonb(ladder)}, rows=False)
    db.forget_tuning()
    return tuning


def recorded(db: Database, embedding_model: str) -> Tuning | None:
    rows = db.query("search-tuning", {"embedding_model": embedding_model})
    return Tuning.from_row(rows[0]) if rows else None
