"""Matching semantics on the real database: the confidence under a manufacturer filter, exact copies, the log."""

import hashlib

import numpy as np
import pytest

from raiox_core.db import Filters
from raiox_core.images import ImageLimits, prepare_image
from raiox_core.match import match_image
from raiox_core.synthetic import demo_files


@pytest.fixture(scope="module")
def query(embedder):
    """A prepared demo radiograph and its vector."""
    image = prepare_image(demo_files(per_diameter=1)[0][1], limits=ImageLimits())
    return image, embedder.encode_one(image.image)


def add(db, embedder, manufacturer: str, model: str, vector, diameter: float = 4.1) -> int:
    """A reference row with a chosen vector (its image is never read by matching)."""
    sha = hashlib.sha256(f"{manufacturer}/{model}/{db.count()}".encode()).hexdigest()
    row = {"manufacturer": manufacturer, "model": model, "diameter_mm": diameter, "source_filename": f"{model}.png",
           "sha256": sha, "object_key": f"referencia/{sha}.png", "width": 64, "height": 64, "source": "upload"}
    with db.inserting(row, {embedder.embedding_model: np.asarray(vector, np.float32)}) as ref_id:
        return ref_id


def far_from(vector, seed: int):
    other = np.random.default_rng(seed).normal(size=vector.shape).astype(np.float32)
    other -= other @ vector * vector  # orthogonal to the query: cosine 0
    return other / np.linalg.norm(other)


@pytest.fixture
def split_models(db, embedder, query):
    """Two Straumann models exactly as similar to the query (a 50/50 model vote), Nobel far away."""
    _, vector = query
    add(db, embedder, "Straumann", "BL", vector)
    add(db, embedder, "Straumann", "BLT", vector)
    for seed in range(3):
        add(db, embedder, "Nobel Biocare", "REPLACE", far_from(vector, seed))


def test_a_manufacturer_filter_does_not_make_a_split_model_vote_confident(db, embedder, query, split_models):
    image, _ = query
    result = match_image(image, db=db, embedder=embedder, threshold=0.6, k=3, filters=Filters(manufacturer="Straumann"))
    assert result.manufacturer_vote[0].probability == pytest.approx(1.0)  # decided by the filter
    assert result.confidence_of == "model" and result.confidence == pytest.approx(0.5, abs=1e-3)
    assert not result.confident and result.answer == "no confident match"
    assert result.restricted_to == "Straumann"
    assert "restricted to Straumann" in result.summary and "among Straumann's models" in result.summary
    data = result.to_json()
    assert (data["confident"], data["confidence_of"], data["restricted_to"]) == (False, "model", "Straumann")
    logged = db.match_log(result.log_id)
    assert (logged["confident"], logged["confidence_of"], logged["answer"]) == (False, "model", "no confident match")
    assert logged["confidence"] == pytest.approx(0.5, abs=1e-3) and logged["filters"] == {"manufacturer": "Straumann"}


def test_without_a_filter_a_split_model_vote_names_only_the_manufacturer(db, embedder, query, split_models):
    image, _ = query
    result = match_image(image, db=db, embedder=embedder, threshold=0.6, k=3)
    assert result.confidence_of == "manufacturer" and result.confident
    assert result.answer == "Straumann"  # not "Straumann BL": the model vote is 50/50
    assert "the model is uncertain" in result.summary


def test_a_model_filter_decides_both_votes_so_nothing_is_confident(db, embedder, query, split_models):
    image, _ = query
    result = match_image(image, db=db, embedder=embedder, threshold=0.1, k=3,
                         filters=Filters(manufacturer="Straumann", model="BL"))
    assert result.confidence_of is None and not result.confident
    assert "cannot confirm" in result.summary


def test_a_clear_model_vote_under_a_filter_is_confident(db, embedder, query):
    image, vector = query
    add(db, embedder, "Straumann", "BL", vector)
    add(db, embedder, "Straumann", "BLT", far_from(vector, 7))
    result = match_image(image, db=db, embedder=embedder, threshold=0.6, k=2, filters=Filters(manufacturer="Straumann"))
    assert result.confident and result.confidence > 0.99 and result.answer == "Straumann BL"


def test_an_image_identical_to_a_reference_is_answered_as_that_reference(db, embedder, query, split_models):
    image, _ = query
    row = {"manufacturer": "Neodent", "model": "DRIVE", "diameter_mm": 3.75, "source_filename": "NEODENT_DRIVE_3.75mm.png",
           "sha256": image.sha256, "object_key": f"referencia/{image.sha256}.png", "width": 64, "height": 64,
           "source": "upload"}
    with db.inserting(row, {embedder.embedding_model: far_from(query[1], 11)}) as ref_id:
        pass
    # A threshold nothing can reach, and a filter that excludes the reference: the copy is still recognised.
    result = match_image(image, db=db, embedder=embedder, threshold=1.0, k=3, filters=Filters(manufacturer="Straumann"))
    assert result.exact is not None and result.exact.id == ref_id
    assert result.confident and result.confidence_of == "exact image"
    assert result.answer == f"this exact image is reference #{ref_id} (Neodent DRIVE 3.75 mm)"
    assert result.summary.startswith(f"This exact image is reference #{ref_id}")
    data = result.to_json()
    assert data["exact_reference"] == {"id": ref_id, "manufacturer": "Neodent", "model": "DRIVE", "diameter_mm": 3.75,
                                       "source_filename": "NEODENT_DRIVE_3.75mm.png"}
    assert db.match_log(result.log_id)["answer"] == result.answer


def test_a_manufacturer_with_one_model_cannot_make_a_confident_answer(db, embedder, query):
    """Osstem has one model: under its filter the model vote is 100% by construction, whatever the X-ray."""
    image, vector = query
    add(db, embedder, "Osstem", "TS3", far_from(vector, 3))
    add(db, embedder, "Straumann", "BL", vector)
    add(db, embedder, "Straumann", "BLT", far_from(vector, 4))
    result = match_image(image, db=db, embedder=embedder, threshold=0.6, k=3, filters=Filters(manufacturer="Osstem"))
    assert result.model_vote[0].probability == pytest.approx(1.0)
    assert result.confidence_of is None and not result.confident
    assert "hold only one model, Osstem TS3 (search restricted to Osstem)" in result.summary


def test_a_set_of_one_manufacturer_votes_on_the_model_without_a_filter(db, embedder, query, split_models):
    image, _ = query
    with db.connection() as conn:  # only Straumann left
        conn.execute("DELETE FROM reference_implants WHERE manufacturer <> 'Straumann'")
    result = match_image(image, db=db, embedder=embedder, threshold=0.6, k=3)
    assert result.confidence_of == "model" and not result.confident
    assert "among Straumann's models" in result.summary and result.restricted_to is None


def test_shares_are_rounded_down_so_a_near_miss_never_reads_as_the_threshold():
    from raiox_core.match import percent

    assert (percent(0.5998), percent(0.6), percent(1.0), percent(0.0)) == ("59%", "60%", "100%", "0%")


def test_a_manufacturer_filter_is_resolved_as_staff_would_type_it(db, embedder, query, split_models):
    from raiox_core.errors import NotFound
    from raiox_core.match import resolve_manufacturer

    assert resolve_manufacturer(db, "straumann") == "Straumann"
    assert resolve_manufacturer(db, "NOBEL") == "Nobel Biocare"  # the file-name token
    assert resolve_manufacturer(db, " ") is None
    with pytest.raises(NotFound, match=r"^No reference has the manufacturer 'Zimmer'; the manufacturers are: "):
        resolve_manufacturer(db, "Zimmer")
