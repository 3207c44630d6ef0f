"""The int8 check's verdicts kept on disk, so that a model load does not repeat a ~5 s check it already made.

One small JSON file per key under `<cache_dir>/int8/`: the key is everything the verdict depends on (the
weights, the CPU's model and vector units, torch and open_clip versions, the code of the int8 forwards and of
the probe images, the threshold), so a change to any of them makes a new file and a fresh check. One file per
key, written to a temporary name and renamed into place, lets processes that load at the same time write
without locks; a file that cannot be read (corrupt, truncated, from an older layout) is ignored and replaced,
and a cache directory that cannot be written only costs the next load its check again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import cpu

log = logging.getLogger(__name__)
LAYOUT = 1  # of the JSON files; bump when their fields change
# The sources whose change can change a verdict: the int8 forwards, and what the probe images are made of.
_CHECKED_SOURCES = ("quantise.py", "synthetic.py", "images.py")


@dataclass(frozen=True)
class Verdict:
    """What the int8 check found: whether int8 is used, and the worst probe cosine int8 vs fp32."""

    passed: bool
    min_cosine: float


def sources_digest(names=_CHECKED_SOURCES) -> str:
    """SHA-256 of raiox_core source files: a cached result made by other code is not this code's."""
    digest = hashlib.sha256()
    for name in names:
        digest.update((Path(__file__).with_name(name)).read_bytes())
    return digest.hexdigest()


def check_key(weights: str, threshold: float, check_version: int) -> dict:
    """Everything a verdict depends on. `weights` names the weights exactly: tag, file digest, or seed."""
    import torch

    return {
        "layout": LAYOUT, "weights": weights, "threshold": threshold, "check_version": check_version,
        "cpu": cpu.model_name(), "cpu_flags": cpu.vector_flags(), "torch_cpu_capability": _cpu_capability(torch),
        "torch": torch.__version__, "open_clip": _open_clip_version(), "code": sources_digest(),
    }


def _open_clip_version() -> str:
    # From the installed distribution's metadata: a cached encoder (ready_encoder) is found without importing
    # open_clip, which costs seconds (torchvision, torch._dynamo).
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return "unknown"


def _cpu_capability(torch) -> str:
    # What torch dispatches to on this CPU (e.g. "AVX512"): fbgemm's kernels follow the same detection.
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # an older torch
        return "unknown"


def _path(cache_dir: Path, key: dict) -> Path:
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(cache_dir) / "int8" / f"{name}.json"


def read(cache_dir: Path, key: dict) -> Verdict | None:
    """The stored verdict for `key`, or None when there is none or it cannot be read (never raises)."""
    path = _path(cache_dir, key)
    try:
        stored = json.loads(path.read_text())
        if stored["key"] != key:  # a hand-edited or colliding file: not this key's verdict
            return None
        passed, min_cosine = stored["passed"], stored["min_cosine"]
        if not isinstance(passed, bool) or not isinstance(min_cosine, float):
            raise TypeError("passed must be true or false and min_cosine a number")
        return Verdict(passed, min_cosine)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a corrupt file is checked again and replaced
        log.info("Ignoring the int8 check's cache file %s (%s): checking again.", path, exc)
        return None


def write(cache_dir: Path, key: dict, verdict: Verdict) -> None:
    """Store `verdict` for `key` atomically (temporary file + rename); a failure is logged, never raised."""
    path = _path(cache_dir, key)
    body = json.dumps({"key": key, "passed": verdict.passed, "min_cosine": verdict.min_cosine}, indent=1)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False) as f:
            tmp = f.name
            f.write(body)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("Could not cache the int8 check in %s (%s): the next load checks again.", path.parent, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
