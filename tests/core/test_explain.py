"""raiox_core.explain on the untrained model: the similarity map, the occlusion check and the deletion curve."""

from __future__ import annotations

import io
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from raiox_core import explain
from raiox_core.errors import ExplainUnavailable, NotFound
from raiox_core.images import ImageLimits, normalise
from raiox_core.synthetic import CATALOGUE, render

SIDE = 224  # the model's input: one patch is exactly 32x32 pixels of these images


@pytest.fixture(scope="module")
def pair():
    """Two radiographs of different designs, at the model's input size."""
    a = normalise(render(CATALOGUE[0], CATALOGUE[0].diameters_mm[0], seed=1, side=SIDE))
    b = normalise(render(CATALOGUE[4], CATALOGUE[4].diameters_mm[0], seed=2, side=SIDE))
    assert a.size == b.size == (SIDE, SIDE)
    return a, b


@pytest.fixture(params=["int8", "fp32"])
def precision(request, embedder):
    """Each test once with the encoder as loaded (int8 where the probe passed) and once in fp32."""
    if request.param == "int8" and embedder.precision != "int8":
        pytest.skip("int8 is not active on this machine")
    with embedder.fp32() if request.param == "fp32" else nullcontext():
        yield request.param


def test_map_is_the_patch_grid_in_cosine_range(embedder, pair, precision):
    m = explain.similarity_map(*pair, embedder)
    assert m.query.shape == m.reference.shape == (7, 7) and m.grid == (7, 7)
    for grid in (m.query, m.reference):
        assert grid.dtype == np.float32 and np.all(grid >= -1.0) and np.all(grid <= 1.0)
    assert m.precision == precision and m.embedding_model == "ViT-B-32/untrained"
    # The pooled vectors are the embedder's own: the pair's cosine is the match's similarity.
    a, b = embedder.encode(list(pair))
    assert m.pair_cosine == pytest.approx(float(a @ b), abs=1e-4)
    assert np.allclose(m.reference_vector, b, atol=1e-4)


def test_an_image_against_itself_is_alike_everywhere(embedder, pair, precision):
    m = explain.similarity_map(pair[0], pair[0], embedder)
    assert np.allclose(m.query, 1.0, atol=1e-4) and np.allclose(m.reference, 1.0, atol=1e-4)
    assert m.pair_cosine == pytest.approx(1.0, abs=1e-4)


def test_a_region_pasted_from_the_reference_is_where_they_look_alike(embedder, pair, precision):
    a, b = pair
    rows, cols = slice(2, 5), slice(1, 4)  # a 3x3 block of patches, on the patch grid
    box = (cols.start * 32, rows.start * 32, cols.stop * 32, rows.stop * 32)
    query = a.copy()
    query.paste(b.crop(box), box[:2])
    m = explain.similarity_map(query, b, embedder)
    pasted = np.zeros((7, 7), dtype=bool)
    pasted[rows, cols] = True
    assert m.query[pasted].mean() > m.query[~pasted].mean() + 0.02
    assert m.query[pasted].min() > np.median(m.query[~pasted])
    # And on the reference's side: its patches that were copied find their twins in the query.
    assert m.reference[pasted].mean() > m.reference[~pasted].mean()


def test_occlusion_in_one_batch_equals_one_patch_at_a_time(embedder, pair):
    a, b = pair
    m = explain.similarity_map(a, b, embedder)
    batched = explain.occlusion_check(a, m, embedder, steps=1, random_orders=1, batch_size=64)
    assert batched.images == 49 + 1 and batched.drops.shape == (7, 7)
    pixels = embedder.to_tensor([a])
    for p in range(49):
        mask = np.zeros((1, 7, 7), dtype=bool)
        mask.reshape(1, 49)[0, p] = True
        one = explain.occluded(pixels, embedder, mask)
        changed = (one[0] != pixels[0]).any(dim=0).numpy()  # pixels greyed: exactly that patch's square
        row, col = divmod(p, 7)
        assert not changed[:, :col * 32].any() and not changed[:, (col + 1) * 32:].any()
        assert not changed[:row * 32].any() and not changed[(row + 1) * 32:].any()
        if p % 4:
            continue  # every 4th patch (13 of 49, corners and centre among them) is encoded alone: a second each here
        vector = embedder.encode_tensor(one, batch_size=1)[0]
        assert batched.drops[row, col] == pytest.approx(m.pair_cosine - float(vector @ m.reference_vector), abs=1e-4)


def test_deletion_curve_starts_at_the_pair_and_ends_with_everything_greyed(embedder, pair):
    a, b = pair
    m = explain.similarity_map(a, b, embedder)
    check = explain.occlusion_check(a, m, embedder)
    d = check.deletion
    assert check.images == 49 + 6 * (1 + explain.RANDOM_ORDERS) + 1  # one batched pass
    assert d.fractions[0] == 0.0 and d.fractions[-1] == 1.0 and len(d.fractions) == explain.DELETION_STEPS + 1
    assert d.importance[0] == d.random[0] == pytest.approx(m.pair_cosine)
    a_vec, b_vec = embedder.encode([a, b])
    assert d.importance[0] == pytest.approx(float(a_vec @ b_vec), abs=1e-4)  # the match's similarity
    assert d.importance[-1] == pytest.approx(d.random[-1], abs=1e-6)  # the same all-grey image
    assert d.faithful == (d.auc_importance < d.auc_random)
    data = check.to_json()
    assert set(data) == {"drops", "max_drop", "mean_drop", "images", "map_drop_rank_correlation", "deletion"}
    assert set(data["deletion"]) == {"fractions", "importance", "random", "random_orders", "seed", "auc_importance",
                                     "auc_random", "faithful", "verdict"}


def test_deletion_orders_put_the_most_alike_patches_first():
    importance = np.arange(49, dtype=np.float32).reshape(7, 7)
    orders = explain.deletion_orders(importance, random_orders=2, seed=3)
    assert orders.shape == (3, 49) and list(orders[0][:3]) == [48, 47, 46]
    assert all(sorted(o) == list(range(49)) for o in orders)
    assert np.array_equal(orders, explain.deletion_orders(importance, random_orders=2, seed=3))


def test_occlusion_needs_a_curve(embedder, pair):
    from raiox_core.errors import InvalidInput

    m = explain.similarity_map(pair[0], pair[0], embedder)
    with pytest.raises(InvalidInput):
        explain.occlusion_check(pair[0], m, embedder, random_orders=0)


def test_normalised_auc():
    x = np.linspace(0, 1, 8)
    assert explain.normalised_auc(x, 0.9 - 0.4 * x) == pytest.approx(0.5)  # a straight fall
    assert explain.normalised_auc(x, np.r_[0.9, np.full(7, 0.5)]) == pytest.approx(1 / 14)  # all lost at once
    assert explain.normalised_auc(x, np.full(8, 0.7)) is None  # nothing to lose


def test_figure_and_json(embedder, pair):
    from raiox_core.references import Reference

    a, b = pair
    m = explain.similarity_map(a, b, embedder)
    reference = Reference(7, "Straumann", "BL\x1b[2J", 4.1, "STRAUMANN_BL_4.1mm_02.png", "0" * 64, "k", 224, 224, "upload")
    drops = np.linspace(-0.01, 0.03, 49, dtype=np.float32).reshape(7, 7)
    curve = explain.DeletionCurve(np.linspace(0, 1, 8), np.linspace(0.9, 0.2, 8), np.linspace(0.9, 0.2, 8) ** 0.5, 3, 0)
    e = explain.Explanation("xray.png", reference, m, explain.OcclusionCheck(drops, curve, 74, 0.5))
    with Image.open(io.BytesIO(explain.figure_png(a, b, e))) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.width > 3 * 320
    data = e.to_json()
    assert set(data) == {"file", "meaning", "reference", "map", "occlusion"}
    assert "regions that look alike" in data["meaning"].lower() and "not a causal" in data["meaning"].lower()
    assert data["reference"]["id"] == 7 and len(data["map"]["query"]) == 7 and len(data["map"]["query"][0]) == 7
    assert set(data["map"]) >= {"pair_cosine", "query_mean", "query_max", "reference_mean", "reference_max", "grid"}


def test_overlay_keeps_the_image_and_colours_the_map():
    image = Image.new("L", (64, 64), 0)
    grid = np.zeros((7, 7), dtype=np.float32)
    grid[0, 0] = 1.0
    out = np.asarray(explain.overlay(image, grid, (0.0, 1.0), side=70))
    assert out.shape == (70, 70, 3)
    assert out[2, 2].sum() > out[-3, -3].sum()  # bright where the map is high, dark where it is low


def test_a_tower_without_patch_tokens_is_refused_in_one_sentence(embedder):
    from dataclasses import replace

    resnet = replace(embedder, model=SimpleNamespace(visual=SimpleNamespace()), embedding_model="RN50/untrained")
    with pytest.raises(ExplainUnavailable, match="RN50/untrained"):
        explain.similarity_map(Image.new("L", (64, 64)), Image.new("L", (64, 64)), resnet)


def test_explain_a_stored_reference(db, settings, embedder):
    from raiox_core.ingest import Source, ingest
    from raiox_core.storage import open_storage
    from raiox_core.synthetic import demo_files

    storage = open_storage(settings)
    name, data = demo_files(per_diameter=1)[3]
    report = ingest([Source.from_bytes(name, data)], db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    ref_id = report.ingested[0].id
    query = normalise(render(CATALOGUE[2], CATALOGUE[2].diameters_mm[0], seed=9, side=SIDE))
    e, image = explain.explain_reference(query, ref_id, db=db, storage=storage, embedder=lambda: embedder)
    assert e.reference.id == ref_id and e.occlusion is None and image.mode == "L"
    stored = db.search(embedder.encode_one(query), embedder.embedding_model, k=1)[0]
    assert e.map.pair_cosine == pytest.approx(stored["similarity"], abs=1e-3)  # the match's similarity

    def no_model():
        raise AssertionError("the model is not needed to refuse an unknown id")

    with pytest.raises(NotFound):
        explain.explain_reference(query, ref_id + 100, db=db, storage=storage, embedder=no_model)
