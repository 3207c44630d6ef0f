"""A ready-to-run image tower kept in the cache dir, so that a one-off `raiox match` needs only torch to encode.

A full model load imports open_clip (with torchvision and torch._dynamo: seconds), builds the model and packs
the int8 weights. The tower it ends with, int8 forwards in place, is traced with TorchScript and frozen: the
file holds the graph, the packed int8 weights and the fp32 ones still used, and `torch.jit.load` runs it
without open_clip. One file per key under `<cache_dir>/encoders/`; the key is the int8 check's (weights, CPU,
torch, open_clip, int8 code; int8_verdicts), the precision asked for and the code that builds the model and
this file. A file is written only when the traced tower's vectors equal the loaded tower's on probe images
(a batch of another size than the traced one too); a file that cannot be loaded is ignored, and the next
full load replaces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import int8_verdicts
from .files import atomic_file

log = logging.getLogger(__name__)
LAYOUT = 1  # of the files (their facts); bump when it changes
FACTS = "raiox.json"  # the TorchScript archive's extra file with the key and the facts an Embedder needs
# The code whose change can change the traced tower: how the model is built (embedder) and traced (here).
_BUILT_BY = ("embedder.py", "ready_encoder.py")
SAME_VECTORS = 1 - 1e-6  # worst cosine allowed between the traced and the loaded tower's vectors at build


def key(check_key: dict, precision: str) -> dict:
    """Everything a stored tower depends on: the int8 check's key (weights, CPU, versions), the precision asked
    for (a verdict's int8 or fp32 follows from the check's key) and the code that builds it."""
    return {"layout": LAYOUT, "check": check_key, "precision": precision,
            "code": int8_verdicts.sources_digest(_BUILT_BY)}


def _path(cache_dir: Path, key: dict) -> Path:
    # Named by the weights, then the whole key: a new key for the same weights replaces the older file.
    weights = hashlib.sha256(key["check"]["weights"].encode()).hexdigest()[:16]
    whole = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "encoders" / f"{weights}-{whole}.pt"


@dataclass
class TracedTower:
    """The stored tower as the embedder calls a model: encode_image of preprocessed pixels."""

    module: object  # torch.jit.ScriptModule

    def encode_image(self, pixels):
        import torch

        # The plain interpreter: the optimising executor spends its first calls profiling (~1 s more for the one
        # image of a one-off match); the operations, and so the vectors, are the same either way.
        with torch.jit.optimized_execution(False):
            return self.module(pixels)


def _quiet_quantizer() -> None:
    # torch warns once that quantized tensors are deprecated; unpacking the int8 weights in torch.jit.load would
    # print it from C++, past Python's filters, into the command's stderr. Made once here, under the filter.
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.quantize_per_channel(torch.ones(1, 1), torch.ones(1, dtype=torch.double), torch.zeros(1, dtype=torch.long),
                                   0, torch.qint8)


def load(cache_dir: Path, key: dict) -> tuple[TracedTower, dict] | None:
    """The stored tower of `key` and its facts (embedding_model, dim, ...), or None when there is none or it
    cannot be loaded (never raises)."""
    import torch

    path = _path(cache_dir, key)
    if not path.is_file():
        return None
    extra = {FACTS: ""}
    try:
        _quiet_quantizer()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        facts = json.loads(extra[FACTS])
        if facts.pop("key") != key:  # a colliding or hand-edited file
            return None
    except (RuntimeError, OSError, ValueError, KeyError, TypeError, AttributeError, EOFError) as exc:
        log.info("Ignoring the stored encoder %s (%s): the next full load replaces it.", path, exc)
        return None
    return TracedTower(module.eval()), facts


def _traceable(visual, packed: list):
    """A module over `visual` that also holds the packed int8 weights, where the tracer looks for them."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = visual
            for i, weights in enumerate(packed):
                setattr(self, f"int8_{i}", weights)

        def forward(self, pixels):
            return self.visual(pixels)

    return Tower()


def save(cache_dir: Path, key: dict, visual, packed: list, pixels, facts: dict) -> bool:
    """Trace `visual` (int8 forwards active, `packed` their weights) on the first of `pixels`, check it on all
    of them, and store it for `key` with `facts`; False (logged, never raised) when it could not be done."""
    import torch

    from .quantise import min_cosine

    path = _path(cache_dir, key)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice, the tracer's notes on shapes
            traced = torch.jit.trace(_traceable(visual, packed), pixels[:1], check_trace=False)
            traced = torch.jit.freeze(traced.eval(), optimize_numerics=False)  # keeps only what the graph uses
            expected = visual(pixels).float().numpy()
            with torch.jit.optimized_execution(False):
                got = traced(pixels).float().numpy()
        worst = min_cosine(expected, got)
        if not worst >= SAME_VECTORS:
            log.warning("The traced image tower does not give the loaded tower's vectors (cosine %.7f): not stored.",
                        worst)
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            torch.jit.save(traced, f, _extra_files={FACTS: json.dumps({**facts, "key": key})})
    # An untraceable tower, a torch without TorchScript, a full or read-only disk: the full load stands.
    except (RuntimeError, OSError, TypeError, ValueError, AttributeError, NotImplementedError) as exc:
        log.warning("Could not store a ready-made encoder in %s (%s): one-off loads stay full loads.", path.parent, exc)
        return False
    for older in path.parent.glob(f"{path.name.split('-')[0]}-*.pt"):  # the same weights' files of older keys
        if older != path:
            older.unlink(missing_ok=True)
    return True
