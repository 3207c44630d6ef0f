"""The active image model as a user should see it: loaded, untrained (and why), or unavailable (why, and the fix).

Every door shows this state before anyone uploads: the dashboard's sidebar on every page, `raiox doctor`,
the CLI's warning. Pages and commands take their model id from here, so that after a fallback to
untrained weights they look for the untrained vectors, not for those of weights that never loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from .embedder import Embedder, embedding_model_for, load_from_settings
from .errors import ModelLoadError

LOADED, UNTRAINED, UNAVAILABLE = "loaded", "untrained", "unavailable"
WEIGHTS_FIX = ("Set RAIOX_PRETRAINED to a pretrained tag whose weights are in the Hugging Face cache, or to a local "
               "checkpoint file (README: Supplying model weights offline).")


@dataclass(frozen=True)
class ModelState:
    """What `load_model_state` found; `embedder` is None only when the model is unavailable."""

    status: str  # LOADED, UNTRAINED or UNAVAILABLE
    embedding_model: str  # the id the active vectors carry (the untrained one after a fallback)
    reason: str | None = None  # why untrained or unavailable, one sentence
    fix: str | None = None  # what to do about it, one sentence
    embedder: Embedder | None = None

    @property
    def usable(self) -> bool:
        return self.embedder is not None

    @property
    def message(self) -> str:
        """One line for a banner or stderr: the state, the reason and the fix."""
        head = {LOADED: f"Model {self.embedding_model} loaded.",
                UNTRAINED: f"Untrained model weights ({self.embedding_model}): similarities and matches are NOT meaningful.",
                UNAVAILABLE: f"Model {self.embedding_model} unavailable."}[self.status]
        return " ".join(part for part in (head, self.reason, self.fix) if part)

    def require(self) -> Embedder:
        """The embedder, or ModelLoadError with the reason when there is none."""
        if self.embedder is None:
            raise ModelLoadError(" ".join(part for part in (self.reason, self.fix) if part))
        return self.embedder


def _fix_for(reason: str) -> str | None:
    # The offline message already says how to supply weights; others (unknown tag, missing file) do not.
    return None if "RAIOX_PRETRAINED" in reason else WEIGHTS_FIX


def load_model_state(settings, ready_made: bool = False) -> ModelState:
    """Load the configured model and say what came of it; never raises ModelLoadError.

    With `settings.untrained_fallback` (what `raiox demo` sets), weights that cannot be loaded give an
    untrained model instead, and the reason says so. `ready_made`: an encoder that only encodes will do
    (embedder.load_embedder).
    """
    try:
        embedder = load_from_settings(settings, ready_made)
    except ModelLoadError as exc:
        if not settings.untrained_fallback:
            return ModelState(UNAVAILABLE, embedding_model_for(settings.model, settings.pretrained), str(exc), _fix_for(str(exc)))
        embedder = load_from_settings(settings.with_(pretrained="none"), ready_made)
        reason = (f"The configured weights {settings.pretrained!r} could not be loaded, so `raiox demo` fell back to "
                  f"untrained ones: {exc}")
        return ModelState(UNTRAINED, embedder.embedding_model, reason, _fix_for(str(exc)), embedder)
    if not embedder.trained:
        return ModelState(UNTRAINED, embedder.embedding_model, "RAIOX_PRETRAINED=none is set.",
                          "Set RAIOX_PRETRAINED to a pretrained tag or a checkpoint file for real use.", embedder)
    return ModelState(LOADED, embedder.embedding_model, embedder=embedder)
