"""Upkeep of the reference set: relabel, delete, re-embed for another model, and sweep orphan objects."""

from __future__ import annotations

import io
import logging
import time
from typing import Callable

from PIL import Image

from .db import Database
from .embedder import Embedder
from .errors import NamingError, StorageError
from .naming import canonical_manufacturer, check_diameter
from .storage import REFERENCE_PREFIX, Storage

log = logging.getLogger(__name__)
ORPHAN_GRACE_S = 600.0  # an unreferenced object younger than this may belong to an ingestion in flight


def relabel(db: Database, reference_id: int, manufacturer: str, model: str, diameter_mm: float) -> None:
    """Correct a reference's labels, canonicalised as ingestion would."""
    if not manufacturer.strip() or not model.strip():
        raise NamingError("The manufacturer and the model must not be empty.")
    db.update_labels(reference_id, canonical_manufacturer(manufacturer), model.strip().upper(), check_diameter(diameter_mm))


def delete_reference(db: Database, storage: Storage, reference_id: int) -> None:
    """Delete the row first: a failed object delete leaves an orphan to sweep, never a row without its image."""
    key = db.delete(reference_id)
    try:
        storage.delete(key)
    except StorageError:
        log.error("Reference %s deleted but its image %s could not be removed yet.", reference_id, key)


def find_orphans(db: Database, storage: Storage, grace_s: float = ORPHAN_GRACE_S) -> list[str]:
    """Stored reference images that no row points to and that are older than the grace period."""
    referenced = db.object_keys()
    now = time.time()
    return [
        key for key in storage.list_keys(REFERENCE_PREFIX)
        if key not in referenced and now - storage.last_modified(key) >= grace_s
    ]


def remove_orphans(db: Database, storage: Storage, grace_s: float = ORPHAN_GRACE_S) -> list[str]:
    """Delete what find_orphans finds, and half-written files of killed processes; returns what was removed."""
    orphans = find_orphans(db, storage, grace_s)
    for key in orphans:
        storage.delete(key)
    return orphans + storage.remove_stale_temporary(grace_s)


def reembed(db: Database, storage: Storage, embedder: Embedder, batch_size: int = 16,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Compute this model's vectors for every reference that lacks them; returns how many were added."""
    missing = db.missing_embeddings(embedder.model_id)
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        images = [Image.open(io.BytesIO(storage.get(row["object_key"]))) for row in chunk]
        vectors = embedder.encode(images, batch_size=batch_size)
        db.add_embeddings(embedder.model_id, {row["id"]: v for row, v in zip(chunk, vectors)})
        if progress:
            progress(start + len(chunk), len(missing))
    return len(missing)
