"""raiox_core.references: one owner for a reference (row + vectors + image), typed records, bulk writes."""

from __future__ import annotations

import numpy as np
import pytest

from raiox_core import references
from raiox_core.db import Filters
from raiox_core.errors import DuplicateReference, StorageError
from raiox_core.images import ImageLimits, prepare_image
from raiox_core.naming import Labels
from raiox_core.references import NewReference, Reference
from raiox_core.storage import REFERENCE_PREFIX, open_storage
from raiox_core.synthetic import demo_files

MODEL, OTHER = "test/one", "test/two"


@pytest.fixture(scope="module")
def images():
    return [prepare_image(data, ImageLimits()) for _, data in demo_files(per_diameter=1)[:12]]


def new(image, i: int, diameter: float = 3.75, vectors: dict | None = None) -> NewReference:
    rng = np.random.default_rng(i)
    unit = lambda: (lambda v: v / np.linalg.norm(v))(rng.standard_normal(16).astype(np.float32))  # noqa: E731
    return NewReference.of_image(image, Labels("Nobel Biocare", f"M{i % 3}", diameter), source_filename=f"f{i}.png",
                                 source="upload", vectors=vectors or {MODEL: unit(), OTHER: unit()})


def test_add_stores_row_vectors_and_image_and_reads_back_typed_records(db, settings, images):
    storage = open_storage(settings)
    ref_id = references.add(db, storage, new(images[0], 0))
    ref = references.get(db, ref_id)
    assert isinstance(ref, Reference) and ref.diameter_mm == 3.75 and ref.label == "Nobel Biocare M0"
    assert storage.get(ref.object_key) == images[0].png
    vector = db.vector(ref_id, OTHER)
    assert vector.dtype == np.float32 and vector.shape == (16,)
    assert references.listing(db, Filters(diameter_min=3.75, diameter_max=3.75)) == [ref]  # exact, not 3.7499
    with pytest.raises(DuplicateReference) as dup:
        references.add(db, storage, new(images[0], 1))
    assert dup.value.reference_id == ref_id


def test_a_failed_commit_takes_the_image_back(db, settings, images, monkeypatch):
    storage = open_storage(settings)
    real_inserting = type(db).inserting

    def inserting_then_fail(self, row, vectors):
        with real_inserting(self, row, vectors) as ref_id:
            yield ref_id
            raise StorageError("The commit failed.")  # after the image was stored, before the commit

    monkeypatch.setattr(type(db), "inserting", __import__("contextlib").contextmanager(inserting_then_fail))
    with pytest.raises(StorageError):
        references.add(db, storage, new(images[0], 0))
    assert db.count() == 0 and list(storage.list_keys(REFERENCE_PREFIX)) == []


def test_add_many_writes_in_bulk_skips_known_images_and_is_all_or_nothing(db, settings, images, monkeypatch):
    storage = open_storage(settings)
    first = references.add(db, storage, new(images[0], 0))
    added = references.add_many(db, storage, [new(image, i) for i, image in enumerate(images)])
    assert set(added) == {image.sha256 for image in images[1:]} and first not in added.values()
    assert db.count() == len(images) and len(db.embeddings(OTHER)) == len(images)
    assert set(storage.list_keys(REFERENCE_PREFIX)) == db.object_keys()

    db_copy = db.insert_many
    monkeypatch.setattr(references, "BULK_ROWS", 2)
    calls = []

    def fail_second(rows, vectors):
        calls.append(len(rows))
        if len(calls) == 2:
            raise StorageError("The database went away.")
        return db_copy(rows, vectors)

    for ref in references.listing(db):
        references.delete_reference(db, storage, ref.id)
    monkeypatch.setattr(db, "insert_many", fail_second)
    with pytest.raises(StorageError):
        references.add_many(db, storage, [new(image, i) for i, image in enumerate(images[:5])])
    assert calls == [2, 2] and db.count() == 2  # the first transaction landed, the second left nothing
    assert set(storage.list_keys(REFERENCE_PREFIX)) == db.object_keys()  # its images were taken back


def test_reembed_and_neighbours(db, settings, images, embedder):
    storage = open_storage(settings)
    ids = [references.add(db, storage, new(image, i, vectors={OTHER: np.ones(16, np.float32)}))
           for i, image in enumerate(images[:6])]
    assert references.neighbours(db, ids[0], embedder.embedding_model) is None  # no vector of that model yet
    assert references.reembed(db, storage, embedder, batch_size=4) == 6
    found = references.neighbours(db, ids[0], embedder.embedding_model, k=3)
    assert len(found) == 3 and ids[0] not in [n.id for n in found]
    assert all(isinstance(n, references.Neighbour) and -1 <= n.similarity <= 1 for n in found)
    mine = db.vector(ids[0], embedder.embedding_model)
    assert mine.dtype == np.float32 and np.allclose(mine, embedder.encode([images[0].image])[0], atol=1e-4)
