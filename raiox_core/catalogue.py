"""Upkeep of the reference set: relabel, delete, re-embed for another model, sweep orphan objects, and
find or put back missing images."""

from __future__ import annotations

import io
import logging
import re
import time
from typing import Callable

from PIL import Image

from .db import Database
from .embedder import Embedder
from .errors import DatabaseUnavailable, NamingError, StorageError
from .naming import canonical_manufacturer, check_diameter
from .storage import REFERENCE_PREFIX, Storage, reference_key

log = logging.getLogger(__name__)
ORPHAN_GRACE_S = 600.0  # an unreferenced object younger than this may belong to an ingestion in flight
_IMAGE_KEY = re.compile(re.escape(REFERENCE_PREFIX) + r"([0-9a-f]{64})\.png")  # reference_key's form


def relabel(db: Database, reference_id: int, manufacturer: str, model: str, diameter_mm: float) -> None:
    """Correct a reference's labels, canonicalised as ingestion would."""
    if not manufacturer.strip() or not model.strip():
        raise NamingError("The manufacturer and the model must not be empty.")
    db.update_labels(reference_id, canonical_manufacturer(manufacturer), model.strip().upper(), check_diameter(diameter_mm))


def delete_reference(db: Database, storage: Storage, reference_id: int) -> None:
    """Delete a reference: its row (and vectors), then its image unless the same image came back meanwhile.

    The row goes first and alone: a failed object delete leaves an orphan to sweep, never a row without its
    image. The image is then deleted under its lock, only if no row refers to it again: an ingestion of
    the same image that raced the delete either committed first (its row keeps the image) or waits on
    the lock and stores the image again after the delete.
    """
    key = db.delete(reference_id)
    try:
        remove_unreferenced(db, storage, key)
    except (StorageError, DatabaseUnavailable):
        log.error("Reference %s deleted but its image %s could not be removed yet.", reference_id, key)


def remove_unreferenced(db: Database, storage: Storage, key: str) -> bool:
    """Delete the stored object `key` if no reference refers to it; True if it was deleted."""
    named = _IMAGE_KEY.fullmatch(key)
    if named is None:  # not named by an image hash: no reference can refer to it
        storage.delete(key)
        return True
    with db.image_lock(named[1]) as reference_id:
        if reference_id is not None:
            return False
        storage.delete(key)
    return True


def restore_missing_image(db: Database, storage: Storage, sha256: str, png: bytes) -> bool:
    """Put back the stored image of the reference of `sha256` if it is missing; True if it was put back.

    `png` must be the normalised image whose pixels hash to `sha256` (as ingestion and restore make it).
    """
    key = reference_key(sha256)
    with db.image_lock(sha256) as reference_id:
        if reference_id is None or storage.exists(key):
            return False
        storage.put(key, png)
    log.warning("The missing image of reference %s was stored again.", reference_id)
    return True


def find_missing_images(db: Database, storage: Storage) -> list[int]:
    """Ids of references whose stored image is missing (`raiox doctor`).

    Storage is listed once, after the rows are read (a committed row's image was stored before its
    commit), and each gap is confirmed under the image's lock, so a delete in progress is not reported.
    """
    rows = db.reference_images()
    stored = set(storage.list_keys(REFERENCE_PREFIX))
    missing = []
    for row in rows:
        if row["object_key"] in stored:
            continue
        with db.image_lock(row["sha256"]) as reference_id:
            if reference_id == row["id"] and not storage.exists(row["object_key"]):
                missing.append(row["id"])
    return missing


def scan_orphans(db: Database, storage: Storage, grace_s: float = ORPHAN_GRACE_S) -> tuple[list[str], list[str]]:
    """Stored reference images that no row points to: (older than the grace period, younger)."""
    referenced = db.object_keys()
    now = time.time()
    old, young = [], []
    for key in storage.list_keys(REFERENCE_PREFIX):
        if key not in referenced:
            (old if now - storage.last_modified(key) >= grace_s else young).append(key)
    return old, young


def find_orphans(db: Database, storage: Storage, grace_s: float = ORPHAN_GRACE_S) -> list[str]:
    """Stored reference images that no row points to and that are older than the grace period."""
    return scan_orphans(db, storage, grace_s)[0]


def remove_orphans(db: Database, storage: Storage, grace_s: float = ORPHAN_GRACE_S,
                   orphans: list[str] | None = None) -> list[str]:
    """Delete what find_orphans finds (or `orphans`, found by it), and half-written files of killed
    processes; returns what was removed. An orphan re-ingested since it was found is kept."""
    orphans = find_orphans(db, storage, grace_s) if orphans is None else orphans
    removed = [key for key in orphans if remove_unreferenced(db, storage, key)]
    return removed + storage.remove_stale_temporary(grace_s)


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
