"""Matching: nearest references of a query X-ray, a similarity-weighted vote, and an honest confidence."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .config import MAX_K  # noqa: F401  (re-exported: the doors validate k against it)
from .db import Database, Filters
from .embedder import Embedder
from .errors import ImageRejected, NotFound, RemoteFileError
from .images import ImageLimits, PreparedImage, prepare_image
from .naming import canonical_manufacturer
from .references import Neighbour, Reference
from .threshold import Threshold, ThresholdPolicy

STAGES = ("decode", "embed", "search", "vote", "log")  # what match_bytes times, in order (MatchResult.timings)
VOTE_POOL = 10  # the vote looks at this many neighbours even when fewer are shown, so k=1 is not 100% sure
VOTE_TEMPERATURE = 0.05  # softmax temperature over cosine similarities, as CLIP's logit scale of 100 would be 0.01


@dataclass
class Share:
    label: str
    probability: float


@dataclass
class MatchResult:
    """Top-k neighbours, the vote, and whether the answer clears the confidence threshold.

    `confidence_of` says which vote the confidence is: "manufacturer"; "model" when the references searched
    hold one manufacturer (a filter, or a set of one), whose vote is then 100% by construction; "exact
    image" (the query is a stored reference); or None when they hold one model, so that no confidence can
    rest on the vote.
    """

    file: str
    embedding_model: str
    trained: bool
    matches: list[Neighbour]
    manufacturer_vote: list[Share]
    model_vote: list[Share]
    confidence: float
    confident: bool
    confidence_of: str | None = "manufacturer"
    restricted_to: str | None = None  # the manufacturer the search was restricted to
    exact: Reference | None = None  # the stored reference whose normalised pixels are the query's (same SHA-256)
    threshold: float = 0.0  # the confidence needed for a confident answer
    threshold_source: str = ""  # where that threshold came from (threshold.py)
    query: PreparedImage | None = field(default=None, repr=False)
    log_id: int | None = None
    # Seconds per stage (decode, embed, search, vote), for the API's metrics; not part of the JSON.
    timings: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def answer(self) -> str:
        if self.exact is not None:
            return f"this exact image is reference #{self.exact.id} ({self.exact.label} {self.exact.diameter_mm:g} mm)"
        if not self.matches:
            return "no references to compare with"
        if not self.confident:
            return "no confident match"
        # Confident in the manufacturer, the answer names a model only when that vote clears the threshold too.
        return self.model_vote[0].label if self.model_certain else self.manufacturer_vote[0].label

    @property
    def model_certain(self) -> bool:
        return bool(self.model_vote) and self.model_vote[0].probability >= self.threshold

    @property
    def summary(self) -> str:
        """The answer in one sentence that says what its percentage is a share of (the same on every door)."""
        if self.exact is not None:
            return f"This exact image is reference #{self.exact.id}: {self.exact.label} {self.exact.diameter_mm:g} mm."
        if not self.matches:
            return "No references to compare with for this model and filter."
        where = f" (search restricted to {self.restricted_to})" if self.restricted_to else ""
        needed = f"below the {self.threshold * 100:g}% needed{where}"
        if self.confidence_of is None:
            return (f"No confident match: the references searched hold only one model, {self.model_vote[0].label}"
                    f"{where}, so the vote cannot confirm it. Compare the candidates yourself.")
        if self.confidence_of == "model":
            manufacturer = self.restricted_to or self.manufacturer_vote[0].label
            share = f"{percent(self.confidence)} of the vote among {manufacturer}'s models"
            leader = f"the leading model, {self.model_vote[0].label}, has {share}"
        else:
            share = f"{percent(self.confidence)} of the vote for {self.manufacturer_vote[0].label}"
            leader = f"the leading manufacturer, {self.manufacturer_vote[0].label}, has {percent(self.confidence)} of the vote"
        if self.confident and not self.model_certain:
            top = self.model_vote[0]
            return (f"Leading answer: {self.answer} ({share}); the model is uncertain: {top.label} has "
                    f"{percent(top.probability)} of the vote, {needed}.")
        if self.confident:
            return f"Leading answer: {self.answer} ({share}){where}."
        return f"No confident match: {leader}, {needed}. Compare the candidates yourself."

    def to_json(self) -> dict:
        """The stable shape documented in the README for `raiox match --json`."""
        return {
            "file": self.file,
            "embedding_model": self.embedding_model,
            "model_id": self.embedding_model,  # the same, under its name before 0.2; goes in 0.3
            "answer": self.answer,
            "confident": self.confident,
            "confidence": round(self.confidence, 4),
            "confidence_of": self.confidence_of,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "restricted_to": self.restricted_to,
            "exact_reference": None if self.exact is None else {
                f: getattr(self.exact, f) for f in ("id", "manufacturer", "model", "diameter_mm", "source_filename")},
            "matches": [m.to_json() for m in self.matches],
            "vote": {
                "manufacturer": [{"label": s.label, "probability": round(s.probability, 4)} for s in self.manufacturer_vote],
                "model": [{"label": s.label, "probability": round(s.probability, 4)} for s in self.model_vote],
            },
        }


def percent(share: float) -> str:
    """A share as a whole percentage rounded down, so that 59.98% is never shown as the 60% it falls short of."""
    return f"{math.floor(share * 100 + 1e-9):d}%"


def vote_weights(similarities: np.ndarray, temperature: float = VOTE_TEMPERATURE) -> np.ndarray:
    """Each neighbour's share of the vote: a softmax of the cosine similarities over the last axis (one query's
    neighbours, or a row per query in the leave-one-out evaluation, which must weigh them as /match does).
    A similarity of -inf (no neighbour there) weighs nothing."""
    best = np.max(similarities, axis=-1, keepdims=True)
    weights = np.exp((similarities - np.where(np.isfinite(best), best, 0.0)) / temperature)
    total = weights.sum(axis=-1, keepdims=True)
    return weights / np.where(total > 0, total, 1.0)


def vote(neighbours: list[Neighbour], temperature: float = VOTE_TEMPERATURE) -> tuple[list[Share], list[Share]]:
    """Softmax-weighted shares per manufacturer and per manufacturer+model, largest first."""
    if not neighbours:
        return [], []
    weights = vote_weights(np.array([n.similarity for n in neighbours], dtype=np.float64), temperature)

    def shares(key) -> list[Share]:
        acc: dict[str, float] = defaultdict(float)
        for n, w in zip(neighbours, weights):
            acc[key(n)] += float(w)
        return sorted((Share(label, p) for label, p in acc.items()), key=lambda s: (-s.probability, s.label))

    return shares(lambda n: n.manufacturer), shares(lambda n: n.label)


def confidence_for(variety: tuple[int, int], manufacturers: list[Share], models: list[Share]) -> tuple[str | None, float]:
    """(which vote, its leading share): the first vote that was not decided before the search.

    `variety` is (manufacturers, models), each up to 2, among the references searched (Database.label_variety). Restricted
    to one manufacturer, by a filter or because the set holds no other, the manufacturer vote is 100% by
    construction, so the question is which model; with one model, both votes are decided and nothing can
    be confident.
    """
    n_manufacturers, n_models = variety
    if n_manufacturers > 1:
        return "manufacturer", manufacturers[0].probability if manufacturers else 0.0
    if n_models > 1:
        return "model", models[0].probability if models else 0.0
    return None, models[0].probability if models else 0.0


def resolve_manufacturer(db: Database, name: str | None) -> str | None:
    """The stored manufacturer a user's filter means ("zimmer", "ZIMMER" -> "Zimmer"); NotFound when none is."""
    if not name or not name.strip():
        return None
    known = [r["manufacturer"] for r in db.query("count-by-manufacturer")]
    wanted = canonical_manufacturer(name).casefold()
    for stored in known:
        if stored.casefold() == wanted:
            return stored
    shown = ", ".join(known[:12]) + (", …" if len(known) > 12 else "") if known else "none yet"
    raise NotFound(f"No reference has the manufacturer {name.strip()[:80]!r}; the manufacturers are: {shown}.")


def _exact_reference(db: Database, sha256: str) -> Reference | None:
    found = db.existing([sha256])
    return Reference.from_row(db.get(found[sha256])) if found else None


def match_image(
    image: PreparedImage,
    *,
    db: Database,
    embedder: Embedder,
    threshold: float | Threshold | ThresholdPolicy,
    k: int = 3,
    filters: Filters = Filters(),
    file: str = "",
    log: bool = True,
) -> MatchResult:
    """Embed a prepared query, search, vote, and log the request (its hash only).

    A query whose pixels are those of a stored reference is answered as that reference, whatever the
    filter: the identification then rests on the reference's label, not on the vote.
    """
    if isinstance(threshold, ThresholdPolicy):
        threshold = threshold.for_model(embedder.embedding_model)
    elif not isinstance(threshold, Threshold):
        threshold = Threshold.given(threshold)
    clock = _Stages()
    vector = embedder.encode_one(image.image)
    clock.lap("embed")
    rows = db.search(vector, embedder.embedding_model, k=max(k, VOTE_POOL), filters=filters)
    neighbours = [Neighbour.from_row(r) for r in rows]
    clock.lap("search")
    manufacturers, models = vote(neighbours[:VOTE_POOL])  # the same vote whatever k
    variety = db.label_variety(embedder.embedding_model, filters, seen={(n.manufacturer, n.model) for n in neighbours})
    basis, confidence = confidence_for(variety, manufacturers, models)
    confident = basis is not None and bool(neighbours) and confidence >= threshold.value
    exact = _exact_reference(db, image.sha256)
    if exact is not None:
        basis, confidence, confident = "exact image", 1.0, True
    clock.lap("vote")
    result = MatchResult(
        file=file, embedding_model=embedder.embedding_model, trained=embedder.trained, matches=neighbours[:k],
        manufacturer_vote=manufacturers, model_vote=models, confidence=confidence, confident=confident,
        confidence_of=basis, restricted_to=filters.manufacturer or None, exact=exact, threshold=threshold.value,
        threshold_source=threshold.source, query=image,
        timings=clock.seconds,
    )
    if log:
        result.log_id = db.log_match(
            query_sha256=image.sha256, embedding_model=embedder.embedding_model, k=k, filters=filters.active(),
            results=result.to_json()["matches"], confidence=confidence, confident=confident,
            confidence_of=basis, answer=result.answer,
        )
        clock.lap("log")
    return result


class _Stages:
    """Seconds spent in each stage since the previous lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self._last
        self._last = now


def match_bytes(data: bytes, *, limits: ImageLimits, file: str = "", **kwargs) -> MatchResult:
    """prepare_image + match_image; ImageRejected propagates with its one-sentence reason."""
    clock = _Stages()
    image = prepare_image(data, limits)
    clock.lap("decode")
    result = match_image(image, file=file, **kwargs)
    result.timings = {**clock.seconds, **result.timings}
    return result


@dataclass(frozen=True)
class Refusal:
    """A query file that could not be matched, and why (one sentence)."""

    file: str
    error: str

    def to_json(self) -> dict:
        """A refused entry of `raiox match --json`."""
        return {"file": self.file, "error": self.error}


def match_files(files: Iterable[tuple[str, Callable[[], bytes]]], *, limits: ImageLimits,
                embedder: Callable[[], Embedder], **kwargs) -> list[MatchResult | Refusal]:
    """Match each (name, read) in turn: a MatchResult, or a Refusal for a file that is not an accepted image
    or cannot be read. `raiox match` and POST /v1/match both answer with this list's to_json()s.

    `embedder` is called only once a file has been read: files that cannot be read need no model.
    """
    answers: list[MatchResult | Refusal] = []
    for name, read in files:
        try:
            data = read()
            answers.append(match_bytes(data, limits=limits, file=name, embedder=embedder(), **kwargs))
        except (ImageRejected, RemoteFileError) as exc:  # not an accepted image, or a download refused
            answers.append(Refusal(name, str(exc)))
        except OSError as exc:
            answers.append(Refusal(name, f"{name} could not be read ({exc.strerror or type(exc).__name__})."))
    return answers
