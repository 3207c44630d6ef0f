"""The reference set: one owner for a reference (row + vectors + content-addressed image, all or nothing).

Adding (one at a time, or many in one bulk transaction), relabelling, deleting, re-embedding for another
embedding model, neighbours of a reference, and the upkeep of stored images: orphans to sweep, missing
ones to find or put back. Ingestion, restore, the demo seed and the bench all add references through here.
"""

from __future__ import annotations

import io
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from .db import Database, Filters
from .embedder import Embedder
from .errors import DatabaseUnavailable, DuplicateReference, NamingError, StorageError
from .images import PreparedImage
from .naming import Labels, canonical_manufacturer, check_diameter
from .storage import REFERENCE_PREFIX, Storage, reference_key

log = logging.getLogger(__name__)
ORPHAN_GRACE_S = 600.0  # an unreferenced object younger than this may belong to an ingestion in flight
_IMAGE_KEY = re.compile(re.escape(REFERENCE_PREFIX) + r"([0-9a-f]{64})\.png")  # reference_key's form
BULK_ROWS = 128  # references per bulk transaction (one COPY each for rows and vectors), images in memory
PUT_WORKERS = 8  # images of a bulk transaction stored at once


# -- typed records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A stored reference, as every door shows it."""

    id: int
    manufacturer: str
    model: str
    diameter_mm: float
    source_filename: str
    sha256: str
    object_key: str
    width: int
    height: int
    source: str
    created_at: datetime | None = None
    group_id: str | None = None

    @property
    def label(self) -> str:
        return f"{self.manufacturer} {self.model}"

    @classmethod
    def from_row(cls, row: dict) -> Reference:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__ if f in row})

    def to_json(self) -> dict:
        """The shape of `raiox list --json`."""
        return {"id": self.id, "manufacturer": self.manufacturer, "model": self.model,
                "diameter_mm": self.diameter_mm, "source_filename": self.source_filename, "sha256": self.sha256,
                "source": self.source, "created_at": self.created_at.isoformat() if self.created_at else None,
                "group_id": self.group_id}


@dataclass(frozen=True)
class Neighbour:
    """A reference found by a similarity search, with its cosine similarity to the query."""

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

    @classmethod
    def from_row(cls, row: dict) -> Neighbour:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})

    def to_json(self) -> dict:
        """One entry of `matches` in `raiox match --json`, and of a reference's neighbours on the API."""
        return {"id": self.id, "manufacturer": self.manufacturer, "model": self.model, "diameter_mm": self.diameter_mm,
                "similarity": round(self.similarity, 4), "source_filename": self.source_filename}


@dataclass(frozen=True)
class NewReference:
    """A reference to add: its labels, its normalised image (PNG, as stored), and one vector per embedding
    model, float32."""

    labels: Labels
    sha256: str
    width: int
    height: int
    png: bytes = field(repr=False)
    source_filename: str
    source: str
    vectors: dict[str, np.ndarray] = field(repr=False)
    group_id: str | None = None  # one physical implant's X-rays share it (see grouping.py)

    @classmethod
    def of_image(cls, image: PreparedImage, labels: Labels, *, source_filename: str, source: str,
                 vectors: dict[str, np.ndarray], group_id: str | None = None) -> NewReference:
        return cls(labels, image.sha256, image.width, image.height, image.png, source_filename, source,
                   {model: np.asarray(v, dtype=np.float32) for model, v in vectors.items()}, group_id)

    @property
    def object_key(self) -> str:
        return reference_key(self.sha256)

    def row(self) -> dict:
        return {"manufacturer": self.labels.manufacturer, "model": self.labels.model,
                "diameter_mm": self.labels.diameter_mm, "source_filename": self.source_filename,
                "sha256": self.sha256, "object_key": self.object_key, "width": self.width,
                "height": self.height, "source": self.source, "group_id": self.group_id}


# -- reading --------------------------------------------------------------------------------------


def get(db: Database, reference_id: int) -> Reference:
    return Reference.from_row(db.get(reference_id))


def listing(db: Database, filters: Filters = Filters(), limit: int = 100, offset: int = 0) -> list[Reference]:
    return [Reference.from_row(row) for row in db.list(filters, limit, offset)]


def neighbours(db: Database, reference_id: int, embedding_model: str, k: int = 6) -> list[Neighbour] | None:
    """The k references nearest to one reference by its stored vector (itself excluded); None: it has no
    vector of this embedding model."""
    vector = db.vector(reference_id, embedding_model)
    if vector is None:
        return None
    found = db.search(vector, embedding_model, k=k + 1)
    return [Neighbour.from_row(row) for row in found if row["id"] != reference_id][:k]


def stats_json(db: Database) -> dict:
    """The shape of `raiox stats --json` (and GET /v1/stats)."""
    stats = db.stats()
    shape = {k: stats[k] for k in ("references", "by_manufacturer", "embedding_models")}
    shape["models"] = stats["embedding_models"]  # the same, under its name before 0.2; goes in 0.3
    return shape


# -- adding ---------------------------------------------------------------------------------------


def add(db: Database, storage: Storage, new: NewReference) -> int:
    """Insert the row and vectors, store the image, commit: all or nothing. Returns the new id;
    DuplicateReference when the image is already a reference (also when added concurrently)."""
    stored = False
    try:
        with db.inserting(new.row(), new.vectors) as reference_id:
            storage.put(new.object_key, new.png)
            stored = True
        return reference_id
    except DuplicateReference:
        raise
    except BaseException:
        if stored:  # the commit failed after the image was written: take it back
            _take_back(db, storage, [new.object_key])
        raise


def add_many(db: Database, storage: Storage, news: Iterable[NewReference]) -> dict[str, int]:
    """Add references in bulk transactions of BULK_ROWS (rows and vectors written with COPY); returns
    sha256 -> id of those added. Images already references are skipped. Each transaction is all or
    nothing: its images are stored first, and taken back if it fails."""
    added: dict[str, int] = {}
    batch: list[NewReference] = []

    def flush() -> None:
        unique = list({n.sha256: n for n in batch}.values())
        stored: list[str] = []
        try:
            _put_all(storage, unique, stored)
            added.update(db.insert_many([n.row() for n in unique], [n.vectors for n in unique]))
        except BaseException:
            _take_back(db, storage, stored)
            raise
        batch.clear()

    for new in news:
        batch.append(new)
        if len(batch) >= BULK_ROWS:
            flush()
    if batch:
        flush()
    return added


def _put_all(storage: Storage, news: list[NewReference], stored: list[str]) -> None:
    """Store the images of one bulk transaction, PUT_WORKERS at a time (each put mostly waits: on fsyncs, or
    on a round trip to S3), appending each stored key to `stored`; the first failure cancels the puts not
    yet started and is raised once those in flight have ended, so `stored` names everything to take back."""
    with ThreadPoolExecutor(PUT_WORKERS, thread_name_prefix="raiox-put") as pool:
        futures = {pool.submit(storage.put, new.object_key, new.png): new.object_key for new in news}
        failure = None
        for future in as_completed(futures):
            if future.cancelled():
                continue
            try:
                future.result()
                stored.append(futures[future])
            except BaseException as exc:
                if failure is None:
                    failure = exc
                    for other in futures:
                        other.cancel()
    if failure is not None:
        raise failure


def _take_back(db: Database, storage: Storage, keys: list[str]) -> None:
    """Remove objects whose commit failed, unless the commit landed after all (its reply was lost) or a
    concurrent copy's row refers to them.

    When the database cannot tell, an object stays: an orphan is swept later (`raiox doctor --repair`,
    or reused by the next ingestion of the image); a row without its image would be lost data.
    """
    for key in keys:
        try:
            remove_unreferenced(db, storage, key)
        except (StorageError, DatabaseUnavailable):
            log.error("Could not remove %s after a failed commit; `raiox doctor --repair` will.", key)


# -- changing -------------------------------------------------------------------------------------


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
    missing = db.missing_embeddings(embedder.embedding_model)
    with db.bulk_load({m: len(missing) for m in embedder.stored_models()}):
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            images = [Image.open(io.BytesIO(storage.get(row["object_key"]))) for row in chunk]
            # Every vector the embedder stores: an adapted embedder's base vectors too (see Embedder.stored_vectors).
            for embedding_model, vectors in embedder.stored_vectors(embedder.to_tensor(images), batch_size).items():
                db.add_embeddings(embedding_model, {row["id"]: v for row, v in zip(chunk, vectors)})
            if progress:
                progress(start + len(chunk), len(missing))
    return len(missing)
