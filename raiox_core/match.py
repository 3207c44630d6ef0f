"""Matching: nearest references of a query X-ray, a similarity-weighted vote, and an honest confidence."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from .db import Database, Filters
from .embedder import Embedder
from .images import ImageLimits, PreparedImage, prepare_image

VOTE_POOL = 10  # the vote looks at this many neighbours even when fewer are shown, so k=1 is not 100% sure
VOTE_TEMPERATURE = 0.05  # softmax temperature over cosine similarities, as CLIP's logit scale of 100 would be 0.01


@dataclass
class Neighbour:
    id: int
    manufacturer: str
    model: str
    diameter_mm: float
    similarity: float
    source_filename: str
    object_key: str
    source: str

    @property
    def label(self) -> str:
        return f"{self.manufacturer} {self.model}"


@dataclass
class Share:
    label: str
    probability: float


@dataclass
class MatchResult:
    """Top-k neighbours, the vote, and whether the answer clears the confidence threshold."""

    file: str
    model_id: str
    trained: bool
    matches: list[Neighbour]
    manufacturer_vote: list[Share]
    model_vote: list[Share]
    confidence: float  # probability of the leading manufacturer in the vote
    confident: bool
    query: PreparedImage | None = field(default=None, repr=False)
    log_id: int | None = None

    @property
    def answer(self) -> str:
        if not self.matches:
            return "no references to compare with"
        return self.model_vote[0].label if self.confident else "no confident match"

    def to_json(self) -> dict:
        """The stable shape documented in the README for `raiox match --json`."""
        return {
            "file": self.file,
            "model_id": self.model_id,
            "confident": self.confident,
            "confidence": round(self.confidence, 4),
            "matches": [
                {"id": m.id, "manufacturer": m.manufacturer, "model": m.model, "diameter_mm": m.diameter_mm,
                 "similarity": round(m.similarity, 4), "source_filename": m.source_filename}
                for m in self.matches
            ],
            "vote": {
                "manufacturer": [{"label": s.label, "probability": round(s.probability, 4)} for s in self.manufacturer_vote],
                "model": [{"label": s.label, "probability": round(s.probability, 4)} for s in self.model_vote],
            },
        }


def vote(neighbours: list[Neighbour], temperature: float = VOTE_TEMPERATURE) -> tuple[list[Share], list[Share]]:
    """Softmax-weighted shares per manufacturer and per manufacturer+model, largest first."""
    if not neighbours:
        return [], []
    best = max(n.similarity for n in neighbours)
    weights = [math.exp((n.similarity - best) / temperature) for n in neighbours]
    total = sum(weights)

    def shares(key) -> list[Share]:
        acc: dict[str, float] = defaultdict(float)
        for n, w in zip(neighbours, weights):
            acc[key(n)] += w / total
        return sorted((Share(label, p) for label, p in acc.items()), key=lambda s: (-s.probability, s.label))

    return shares(lambda n: n.manufacturer), shares(lambda n: n.label)


def match_image(
    image: PreparedImage,
    *,
    db: Database,
    embedder: Embedder,
    threshold: float,
    k: int = 3,
    filters: Filters = Filters(),
    file: str = "",
    log: bool = True,
) -> MatchResult:
    """Embed a prepared query, search, vote, and log the request (its hash only)."""
    vector = embedder.encode_one(image.image)
    rows = db.search(vector, embedder.model_id, k=max(k, VOTE_POOL), filters=filters)
    neighbours = [Neighbour(**{f: r[f] for f in Neighbour.__dataclass_fields__}) for r in rows]
    manufacturers, models = vote(neighbours)
    confidence = manufacturers[0].probability if manufacturers else 0.0
    result = MatchResult(
        file=file, model_id=embedder.model_id, trained=embedder.trained, matches=neighbours[:k],
        manufacturer_vote=manufacturers, model_vote=models, confidence=confidence,
        confident=bool(neighbours) and confidence >= threshold, query=image,
    )
    if log:
        result.log_id = db.log_match(
            query_sha256=image.sha256, model_id=embedder.model_id, k=k, filters=filters.active(),
            results=result.to_json()["matches"], confidence=confidence, confident=result.confident,
        )
    return result


def match_bytes(data: bytes, *, limits: ImageLimits = ImageLimits(), file: str = "", **kwargs) -> MatchResult:
    """prepare_image + match_image; ImageRejected propagates with its one-sentence reason."""
    return match_image(prepare_image(data, limits), file=file, **kwargs)
