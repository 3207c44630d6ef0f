"""`raiox evaluate`: how right /match is on the reference set (leave one group out), and the confidence
threshold that reaches a target precision, stored per embedding model and used by every door."""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from psycopg.types.json import Jsonb

from . import vote_accuracy as va
from .db import Database
from .errors import TooFewReferences
from .grouping import NEAR_IDENTICAL, groups


@dataclass(frozen=True)
class LabelledVectors:
    """The references of one embedding model, as evaluation and training read them."""

    ids: np.ndarray
    vectors: np.ndarray
    labels: va.Labels
    manufacturers: np.ndarray  # per reference
    group_ids: list[str | None]

    @classmethod
    def load(cls, db: Database, embedding_model: str) -> LabelledVectors:
        rows = db.embeddings(embedding_model)
        if len(rows) < 2:
            raise TooFewReferences(f"Evaluation needs at least 2 references with {embedding_model} vectors; "
                                   f"there are {len(rows)}.")
        manufacturers = [r["manufacturer"] for r in rows]
        return cls(np.array([r["id"] for r in rows]), np.stack([r["embedding"] for r in rows]),
                   va.Labels.of(manufacturers, [r["model"] for r in rows], [r["diameter_mm"] for r in rows]),
                   np.asarray(manufacturers, dtype=object), [r.get("group_id") for r in rows])

    def groups(self) -> np.ndarray:
        return groups(self.vectors, self.group_ids)


def evaluate_references(data: LabelledVectors) -> dict:
    """Leave one group out over the references: accuracy (overall and per manufacturer, with 95% intervals)
    and the precision/coverage curve of the confidence. The JSON of `raiox evaluate --json`."""
    group_of = data.groups()
    out = va.outcomes(data.vectors, data.labels, data.vectors, data.labels, query_groups=group_of, gallery_groups=group_of)
    counts = va.bootstrap_counts(int(group_of.max()) + 1)
    per_manufacturer = []
    for name in sorted(set(data.manufacturers)):
        rows = data.manufacturers == name
        per_manufacturer.append({"manufacturer": name, "references": int(rows.sum()),
                                 **va.accuracy(out, group_of, counts, rows)})
    return {
        "references": len(data.ids), "groups": int(group_of.max()) + 1, "near_identical_cosine": NEAR_IDENTICAL,
        "manufacturers": len(per_manufacturer), "models": int(len(np.unique(data.labels.model))),
        "confidence_of": out.basis, "bootstrap_draws": int(counts.shape[0]),
        "accuracy": va.accuracy(out, group_of, counts), "by_manufacturer": per_manufacturer,
        "precision_coverage": va.precision_coverage(out),
    }


def save(db: Database, embedding_model: str, report: dict) -> dict:
    """Store a report as the model's latest calibration; the report with its `computed_at`."""
    (row,) = db.query("insert-calibration", {"embedding_model": embedding_model, "n_references": report["references"],
                                             "report": Jsonb(report)})
    return {**report, "embedding_model": embedding_model, "computed_at": row["computed_at"].isoformat()}


def latest(db: Database, embedding_model: str) -> dict | None:
    rows = db.query("latest-calibration", {"embedding_model": embedding_model})
    if not rows:
        return None
    row = rows[0]
    return {**row["report"], "embedding_model": embedding_model, "computed_at": row["computed_at"].isoformat()}
