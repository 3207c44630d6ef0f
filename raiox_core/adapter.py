"""`raiox train`: a small adapter learnt from the labelled references' stored vectors, judged against the frozen
model by grouped cross-validation, adopted only when its improvement is certain, and undone with RAIOX_ADAPTER=off.

The adapter is a residual linear map, x -> unit(x + x A), started at A = 0 (the identity) and kept near it by a
penalty on |A|^2. It is trained on the base model's stored vectors (no re-encoding), with a prototype loss: each
reference's adapted vector against the class prototypes (mean adapted vectors) of its manufacturer and of its
model, its own group left out of its own prototype. A linear map is all the stored vectors allow without the
images, and it is what the common failure needs: directions of strong variation that carry no label (exposure,
crop, projection angle) drown the ones that do; the map learns to shrink them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from psycopg.types.json import Jsonb

from . import vote_accuracy as va
from .calibration import LabelledVectors
from .errors import RaioxError, TooFewReferences
from .grouping import grouped_folds, unit_rows

log = logging.getLogger(__name__)
FOLDS = 5
SEED = 0
MIN_GROUPS = 2 * FOLDS  # fewer groups make folds of one or two implants: intervals too wide to decide anything
MARKER = "+adapter:"
# Below this many multiply-adds per step (rows x dim^2), fitting runs on one thread: torch's threads spin-wait at
# every one of the thousands of small ops, and on a busy 2-core machine that made a 1.4 s fit take 30-45 s.
ONE_THREAD_BELOW = 2_000_000_000


@dataclass(frozen=True)
class FitParams:
    """How an adapter is fitted. The defaults were chosen on synthetic sets (tests/core/test_adapter.py) and
    the 1k/10k bench: a few hundred full-batch Adam steps converge there in seconds to a minute."""

    steps: int = 300
    lr: float = 0.01
    temperature: float = 0.05  # of the softmax over cosine similarities to the prototypes
    l2: float = 0.01  # weight of |A|^2 (Frobenius): keeps the map near the identity
    manufacturer_weight: float = 0.5  # the manufacturer loss beside the model (manufacturer + model) loss
    # Rows per step: all of them up to this many, else a seeded random sample each step. Every step costs
    # rows x dim^2 multiply-adds; sampling keeps 10k references as fast as 1k, and the prototypes of a sample of
    # 1,024 are still means over dozens of references per class.
    batch: int = 1024
    seed: int = SEED

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Adapter:
    """A residual map of one base model's vectors; `embedding_model` is the id its vectors are stored under."""

    base_model: str
    residual: np.ndarray  # (d, d) float32

    @property
    def embedding_model(self) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(self.residual, dtype="<f4").tobytes()).hexdigest()[:12]
        return f"{self.base_model}{MARKER}{digest}"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Adapted unit vectors of base vectors: one (d,) vector or an (n, d) matrix."""
        x = np.asarray(x, dtype=np.float32)
        one = x.ndim == 1
        rows = x[None, :] if one else x
        out = unit_rows(rows + rows @ self.residual)
        return out[0] if one else out

    def residual_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(self.residual, dtype="<f4"), allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, base_model: str, data: bytes) -> Adapter:
        return cls(base_model, np.load(io.BytesIO(bytes(data)), allow_pickle=False).astype(np.float32))


# -- fitting --------------------------------------------------------------------------------------


def _codes(values: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(values), return_inverse=True)[1].astype(np.int64)


def _prototype_loss(z, classes, n_classes: int, own_sum, own_count, temperature: float, torch):
    """Mean cross-entropy of each row against the unit prototypes (sums) of every class, its own class's
    prototype without the row's own group (own_sum: the group's sum in that class). Rows whose class has
    nothing left once their group is out are not scored (they still shape the other prototypes)."""
    sums = torch.zeros(n_classes, z.shape[1], dtype=z.dtype).index_add_(0, classes, z)
    counts = torch.bincount(classes, minlength=n_classes)
    norms = sums.norm(dim=1).clamp_min(1e-12)
    logits = (z @ sums.T) / norms  # cosine of each row to each class prototype
    held_out = sums[classes] - own_sum
    own = (z * held_out).sum(dim=1) / held_out.norm(dim=1).clamp_min(1e-12)
    logits = logits.scatter(1, classes[:, None], own[:, None])
    logits = logits.masked_fill((counts == 0)[None, :], float("-inf"))  # codes of no row in this fold
    scored = counts[classes] > own_count
    if not bool(scored.any()):
        return z.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[scored] / temperature, classes[scored])


def fit(x: np.ndarray, labels: va.Labels, group_of: np.ndarray, base_model: str,
        params: FitParams = FitParams()) -> tuple[Adapter, dict]:
    """Fit an adapter on unit base vectors `x` with their labels and groups; (adapter, {"loss_start", "loss_end",
    "seconds"}). Deterministic for the same inputs and params (seeded row samples, no random start)."""
    import torch

    started = time.perf_counter()
    x_t = torch.from_numpy(unit_rows(x))
    levels = [(torch.from_numpy(_codes(labels.model)), 1.0),
              (torch.from_numpy(_codes(labels.manufacturer)), params.manufacturer_weight)]
    # Per row and level: its class, and its (group, class) key, whose rows are left out of its own prototype.
    prepared = []
    for classes, weight in levels:
        if weight <= 0:
            continue
        key = torch.from_numpy(_codes(group_of.astype(np.int64) * (int(classes.max()) + 1) + classes.numpy()))
        prepared.append((classes, int(classes.max()) + 1, key, int(key.max()) + 1, weight))
    d = x_t.shape[1]
    threads = torch.get_num_threads()
    if min(len(x_t), params.batch) * d * d < ONE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        residual, losses = _descend(x_t, prepared, params, torch)
    finally:
        torch.set_num_threads(threads)
    adapter = Adapter(base_model, residual.detach().numpy().astype(np.float32))
    return adapter, {"loss_start": round(losses[0], 5) if losses else None,
                     "loss_end": round(losses[-1], 5) if losses else None,
                     "seconds": round(time.perf_counter() - started, 3)}


def _descend(x_t, prepared, params: FitParams, torch):
    """Adam from A = 0 over all rows, or a seeded sample of params.batch rows per step: (A, the loss at each step)."""
    n, d = x_t.shape
    generator = torch.Generator().manual_seed(params.seed)
    residual = torch.zeros(d, d, dtype=torch.float32, requires_grad=True)
    optimiser = torch.optim.Adam([residual], lr=params.lr)
    losses = []
    for _ in range(params.steps):
        rows = torch.randperm(n, generator=generator)[:params.batch] if n > params.batch else slice(None)
        optimiser.zero_grad()
        xb = x_t[rows]
        z = torch.nn.functional.normalize(xb + xb @ residual, dim=1)
        loss = params.l2 * (residual ** 2).sum()
        for classes, n_classes, key, n_keys, weight in prepared:
            classes, key = classes[rows], key[rows]
            key_sum = torch.zeros(n_keys, d, dtype=z.dtype).index_add_(0, key, z)
            own_count = torch.bincount(key, minlength=n_keys)[key]
            loss = loss + weight * _prototype_loss(z, classes, n_classes, key_sum[key], own_count,
                                                   params.temperature, torch)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return residual, losses


# -- judging --------------------------------------------------------------------------------------


def _paired(a: np.ndarray, b: np.ndarray, group_of: np.ndarray, counts: np.ndarray) -> dict:
    """The mean of a - b (hits of the adapter minus hits of the frozen model, per reference) and its 95%
    interval over the same bootstrap resamples of groups as the accuracies: the pairs stay together."""
    return va.interval(a.astype(np.float64) - b.astype(np.float64), group_of, counts)


def cross_validate(x: np.ndarray, labels: va.Labels, group_of: np.ndarray, base_model: str, *,
                   k: int = FOLDS, seed: int = SEED, params: FitParams = FitParams(),
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Grouped k-fold cross-validation of the adapter against the frozen vectors on the same folds: per fold,
    an adapter fitted on the other folds; each reference of the fold answered from the other folds' references
    by /match's vote, adapted and frozen. Accuracies and paired improvements with 95% group-bootstrap
    intervals, the folds (as positions), the adoption rule's verdict."""
    n_groups = int(group_of.max()) + 1
    if n_groups < MIN_GROUPS:
        raise TooFewReferences(f"Training needs at least {MIN_GROUPS} groups of references (implants) for "
                               f"{k}-fold cross-validation; there are {n_groups}.")
    if len(np.unique(labels.model)) < 2:
        raise TooFewReferences("Training needs references of at least two models; all are of one.")
    x = unit_rows(x)
    fold_of = grouped_folds(group_of, k, seed)
    ranks = {name: {level: np.empty(len(x), dtype=np.int64) for level in va.LEVELS} for name in ("frozen", "adapted")}
    confidence, right, basis = np.zeros(len(x)), np.zeros(len(x), dtype=bool), None
    fits = []
    for fold in range(k):
        test, train = fold_of == fold, fold_of != fold
        adapter, info = fit(x[train], labels.take(train), group_of[train], base_model, params)
        fits.append({"fold": fold, "references": int(test.sum()), **info})
        for name, mapped in (("frozen", x), ("adapted", adapter.apply(x))):
            out = va.outcomes(mapped[test], labels.take(test), mapped[train], labels.take(train))
            for level in va.LEVELS:
                ranks[name][level][test] = out.ranks[level]
            if name == "adapted":  # what an adopted adapter's confidence threshold is calibrated on
                confidence[test], right[test], basis = out.confidence, out.confident_right, basis or out.basis
        if progress:
            progress(fold + 1, k)
    counts = va.bootstrap_counts(n_groups, seed)
    accuracy = {name: va.accuracy(va.Outcomes(r, confidence, right, basis), group_of, counts)
                for name, r in ranks.items()}
    improvement = {f"top{t}_{level}": _paired(ranks["adapted"][level] < t, ranks["frozen"][level] < t, group_of, counts)
                   for level in ("manufacturer", "model") for t in va.TOP_K}
    adopt, reason = decide(improvement)
    return {"references": len(x), "groups": n_groups, "folds": k, "fold_seed": seed,
            "models": int(len(np.unique(labels.model))), "manufacturers": int(len(np.unique(labels.manufacturer))),
            "bootstrap_draws": int(counts.shape[0]), "params": params.to_json(), "frozen": accuracy["frozen"],
            "adapted": accuracy["adapted"], "improvement": improvement, "fits": fits,
            "fold_of": fold_of.tolist(), "adopt": adopt, "reason": reason, "confidence_of": basis,
            "precision_coverage": va.precision_coverage(va.Outcomes(ranks["adapted"], confidence, right, basis))}


def decide(improvement: dict) -> tuple[bool, str]:
    """The adoption rule: the lower 95% bound of the model top-1 improvement must be above zero, and the
    manufacturer top-1 must not be certainly worse (its upper bound below zero). (adopt, why) in words."""
    model, manufacturer = improvement["top1_model"], improvement["top1_manufacturer"]
    if not model["low"] > 0:
        return False, (f"the model top-1 improvement {model['value']:+.1%} has a 95% interval from {model['low']:+.1%} "
                       f"to {model['high']:+.1%}, whose lower bound is not above zero")
    if manufacturer["high"] < 0:
        return False, (f"the model top-1 improves, but the manufacturer top-1 is certainly worse "
                       f"({manufacturer['value']:+.1%}, interval {manufacturer['low']:+.1%} to {manufacturer['high']:+.1%})")
    return True, (f"the model top-1 improvement {model['value']:+.1%} has a 95% interval from {model['low']:+.1%} to "
                  f"{model['high']:+.1%}, above zero")


# -- storing, adopting, switching -----------------------------------------------------------------


def train(db, base_model: str, *, k: int = FOLDS, seed: int = SEED, params: FitParams = FitParams(),
          progress: Callable[[int, int], None] | None = None) -> dict:
    """`raiox train`: cross-validate an adapter of the base model's stored vectors; when the rule adopts it,
    fit it on every reference, write its vectors for every reference, store the cross-validated calibration of
    its confidence and make it the active model of the base. Every run is stored (table `adapters`); the
    report (the JSON of `raiox train --json`) says what was done."""
    data = LabelledVectors.load(db, base_model)
    group_of = data.groups()
    report = cross_validate(data.vectors, data.labels, group_of, base_model, k=k, seed=seed, params=params,
                            progress=progress)
    fold_of = np.asarray(report.pop("fold_of"))
    report["fold_ids"] = [data.ids[fold_of == f].tolist() for f in range(k)]  # kept with the run: reproducible
    report["base_model"] = base_model
    if not report["adopt"]:
        row = _insert_run(db, base_model, report, None)
        return {**report, "run_id": row["id"], "created_at": row["created_at"].isoformat(), "adopted": False,
                "adapter_model": None}
    adapter, report["final_fit"] = fit(data.vectors, data.labels, group_of, base_model, params)
    # Written from the vectors in hand (one binary COPY); adopt() then adds those of references ingested meanwhile.
    db.add_embeddings(adapter.embedding_model, dict(zip(data.ids.tolist(), adapter.apply(data.vectors))))
    return adopt(db, adapter, report)


def adopt(db, adapter: Adapter, report: dict) -> dict:
    """Make an adapter the active model of its base: its vectors for every reference that has a base vector,
    the run stored as adopted and active (the one active adapter of the base), and the cross-validated
    calibration of its confidence, so that RAIOX_TARGET_PRECISION has a threshold that did not see its queries.
    The report with the run's id, date and the adapter's id."""
    from .calibration import save
    from .db import named_queries

    sync(db, adapter)
    row = _insert_run(db, adapter.base_model, report, adapter)
    with db.connection() as conn:  # one transaction: never two active adapters, never a moment without one
        conn.execute(named_queries()["deactivate-adapters"], {"base_model": adapter.base_model})
        conn.execute(named_queries()["activate-adapter"], {"id": row["id"]})
    if report.get("precision_coverage"):
        save(db, adapter.embedding_model, {
            "source": "raiox train (grouped cross-validation)", "references": report["references"],
            "groups": report["groups"], "confidence_of": report["confidence_of"], "accuracy": report["adapted"],
            "precision_coverage": report["precision_coverage"]})
    return {**report, "run_id": row["id"], "created_at": row["created_at"].isoformat(), "adopted": True,
            "adapter_model": adapter.embedding_model}


def _insert_run(db, base_model: str, report: dict, adapter: Adapter | None) -> dict:
    (row,) = db.query("insert-adapter", {
        "base_model": base_model, "embedding_model": adapter.embedding_model if adapter else None,
        "residual": adapter.residual_bytes() if adapter else None, "n_references": report.get("references", 0),
        "report": Jsonb(report), "adopted": adapter is not None})
    return row


def deactivate(db, base_model: str) -> list[str]:
    """Switch the base model back to its own vectors for every door (`raiox train --off`); the ids switched off.
    The adapter's vectors and runs stay: a later `raiox train` may adopt it again."""
    return [r["embedding_model"] for r in db.query("deactivate-adapters", {"base_model": base_model})]


def runs(db, base_model: str, limit: int = 20) -> list[dict]:
    """The latest training runs of a base model, newest first, with their reports."""
    return [{**r, "created_at": r["created_at"].isoformat()}
            for r in db.query("adapter-runs", {"base_model": base_model, "limit": limit})]


def active_id(db, base_model: str, settings) -> str | None:
    """The id of the adapter in force for a base model: the active one, unless RAIOX_ADAPTER=off."""
    if getattr(settings, "adapter", "on") == "off" or MARKER in base_model:
        return None
    rows = db.query("active-adapter", {"base_model": base_model})
    return rows[0]["embedding_model"] if rows else None


def active_model_id(db, base_model: str, settings) -> str:
    """The embedding model whose vectors the doors search for this base model (the base when none is active)."""
    return active_id(db, base_model, settings) or base_model


def load(db, embedding_model: str) -> Adapter:
    """A stored, adopted adapter by its id."""
    rows = db.query("adapter-residual", {"embedding_model": embedding_model})
    if not rows:
        raise RaioxError(f"There is no adopted adapter {embedding_model}.")
    return Adapter.from_bytes(embedding_model.rpartition(MARKER)[0], rows[0]["residual"])


def sync(db, adapter: Adapter) -> int:
    """Adapted vectors for the references that have base vectors but none of the adapter (ingested while it was
    switched off, restored, seeded in bulk); how many were written. Computed from the stored base vectors."""
    rows = db.query("vectors-to-adapt", {"base_model": adapter.base_model, "embedding_model": adapter.embedding_model})
    if rows:
        vectors = adapter.apply(np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in rows]))
        db.add_embeddings(adapter.embedding_model, {r["id"]: v for r, v in zip(rows, vectors)})
    return len(rows)


class AdaptedEmbedder:
    """The base embedder with an adapter after it: the same attributes and verbs, vectors of the adapter's id.

    A wrapper rather than a subclass: the base model (and its int8 tower) is loaded once and shared, and
    switching the adapter off is using the base embedder again."""

    def __init__(self, base, adapter: Adapter):
        self.base, self.adapter = base, adapter
        self.embedding_model = adapter.embedding_model

    def __getattr__(self, name: str):  # dim, device, trained, precision, to_tensor, fp32, ...
        return getattr(self.base, name)

    def encode_tensor(self, pixels, batch_size: int = 16) -> np.ndarray:
        return self.adapter.apply(self.base.encode_tensor(pixels, batch_size))

    def encode(self, images, batch_size: int = 16) -> np.ndarray:
        return self.adapter.apply(self.base.encode(images, batch_size))

    def encode_one(self, image) -> np.ndarray:
        return self.encode([image])[0]

    def stored_vectors(self, pixels, batch_size: int = 16) -> dict[str, np.ndarray]:
        """Both vectors of each image: the base one (so that the adapter can be switched off and retrained) and
        the adapted one."""
        base = self.base.encode_tensor(pixels, batch_size)
        return {self.base.embedding_model: base, self.embedding_model: self.adapter.apply(base)}

    def stored_models(self) -> list[str]:
        return [self.base.embedding_model, self.embedding_model]


def with_active_adapter(state, db, settings):
    """The model state with the active adapter of its model in force (see active_id), or the state unchanged.

    `db` is a Database or a function giving one (the doors open theirs lazily). When the database cannot be
    asked, the base model stays in force: every reference has base vectors, so its answers are still right,
    only without the adapter's gain."""
    if state.embedder is None or getattr(settings, "adapter", "on") == "off":
        return state
    try:
        database = db() if callable(db) else db
        found = active_id(database, state.embedding_model, settings)
        if found is None:
            return state
        adapter = load(database, found)
        sync(database, adapter)
    except RaioxError as exc:
        log.warning("The active adapter of %s could not be looked up, so the base model is used: %s",
                    state.embedding_model, exc)
        return state
    return dataclasses.replace(state, embedding_model=adapter.embedding_model,
                               embedder=AdaptedEmbedder(state.embedder, adapter))
