"""The confidence threshold in force for an embedding model, and where it came from: RAIOX_MATCH_THRESHOLD,
a threshold calibrated for RAIOX_TARGET_PRECISION by `raiox evaluate`, or the default."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class Threshold:
    """The confidence needed for a confident answer, and its origin in a few words (shown on every door)."""

    value: float
    source: str

    @classmethod
    def given(cls, value: float) -> Threshold:
        return cls(float(value), "given by the caller")

    def to_json(self) -> dict:
        return {"value": self.value, "source": self.source}


@dataclass(frozen=True)
class ThresholdPolicy:
    """What the doors pass to match: the threshold is looked up per match, so a new calibration applies at once."""

    settings: object
    db: object

    def for_model(self, embedding_model: str) -> Threshold:
        return threshold_in_force(self.settings, self.db, embedding_model)


def threshold_in_force(settings, db, embedding_model: str) -> Threshold:
    """RAIOX_MATCH_THRESHOLD when set; else, with RAIOX_TARGET_PRECISION, the lowest threshold of the model's
    latest calibration from which on that precision is reached; else the default, saying why."""
    from .calibration import latest  # calibration -> vote_accuracy -> match -> this module
    from .vote_accuracy import threshold_for

    if settings.match_threshold_set:
        return Threshold(settings.match_threshold, "RAIOX_MATCH_THRESHOLD")
    target = settings.target_precision
    if target is None:
        return Threshold(settings.match_threshold, "the default, as RAIOX_TARGET_PRECISION is not set")
    found = latest(db, embedding_model)
    if found is None:
        return Threshold(settings.match_threshold, f"the default: no calibration for this model yet, so none for "
                                                   f"precision {target:g} (run `raiox evaluate`)")
    when = datetime.fromisoformat(found["computed_at"]).astimezone(timezone.utc).strftime("%Y-%m-%d")
    chosen = threshold_for(found["precision_coverage"], target)
    if chosen is None:
        return Threshold(settings.match_threshold, f"the default: no threshold reached precision {target:g} in the "
                                                   f"calibration of {when} on {found['references']} references")
    return Threshold(chosen, f"calibrated for precision {target:g} on {found['references']} references ({when})")
