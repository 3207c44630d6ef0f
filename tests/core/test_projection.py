"""Projections: shapes, tiny sets, determinism, transform without refit, and the on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from raiox_core import projection as proj
from raiox_core.projection import (
    ProjectionParams,
    TooFewReferences,
    cached_projection,
    fingerprint,
    project,
    projection_frame,
)


def clustered(n_clusters=3, per=10, dim=32, spread=0.15, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    labels = np.repeat(np.arange(n_clusters), per)
    v = (centres[labels] + spread * rng.standard_normal((len(labels), dim))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True), labels


def rows_of(vectors, labels, first_id=1):
    return [{"id": first_id + i, "manufacturer": f"M{lab}", "model": "X", "diameter_mm": 4.0, "embedding": v}
            for i, (v, lab) in enumerate(zip(vectors, labels))]


@pytest.fixture(autouse=True)
def fresh_memory():
    proj.clear_memory_cache()
    yield
    proj.clear_memory_cache()


# -- project ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
def test_pca_shapes_and_transform(dims):
    v, _ = clustered()
    p = project(v, "pca", dims, ids=range(100, 130))
    assert p.coords.shape == (30, dims) and p.coords.dtype == np.float32
    assert p.ids.tolist() == list(range(100, 130)) and p.method == "pca" and p.note is None
    # PCA's transform of a training vector is exactly its own point.
    assert np.allclose(p.transform(v[:3]), p.coords[:3], atol=1e-5)
    assert p.transform(v[0]).shape == (1, dims)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_tiny_sets_fall_back_to_pca_with_a_note(n):
    v, _ = clustered(n_clusters=1, per=n)
    p = project(v, "umap", 3)
    assert p.method == "pca" and "UMAP needs at least" in p.note
    assert p.coords.shape == (n, 3)  # missing PCA axes are zeros, so the shape never varies
    assert p.transform(v[:1]).shape == (1, 3)


def test_empty_set_and_bad_parameters_are_refused():
    with pytest.raises(TooFewReferences):
        project(np.empty((0, 8), np.float32), "pca")
    with pytest.raises(ValueError):
        ProjectionParams(method="tsne")
    with pytest.raises(ValueError):
        ProjectionParams(n_components=4)


def test_umap_deterministic_clamped_and_transform_lands_near_the_original():
    """The one core test that runs UMAP (numba compiles it on first use: ~30-60 s)."""
    v, labels = clustered()
    a = project(v, "umap", 2, n_neighbors=8, seed=7)
    b = project(v, "umap", 2, n_neighbors=8, seed=7)
    assert a.method == "umap" and a.coords.shape == (30, 2)
    assert np.allclose(a.coords, b.coords)

    # A copy of a training vector, placed without refitting, lands by its original, in its own cluster.
    copies = v[[0, 11, 22]] * 1.0001  # not bit-identical, so UMAP really transforms them
    placed = a.transform(copies)
    spread = np.ptp(a.coords, axis=0).max()
    for row, point in zip([0, 11, 22], placed):
        assert np.linalg.norm(point - a.coords[row]) < 0.25 * spread
        nearest = np.argmin(np.linalg.norm(a.coords - point, axis=1))
        assert labels[nearest] == labels[row]

    tiny = project(v[:8], "umap", 3, n_neighbors=15)
    assert tiny.n_neighbors == 7 and "lowered from 15 to 7" in tiny.note and tiny.coords.shape == (8, 3)

    # Above 4096 points UMAP would search a pynndescent index; the reducer is switched to exact search
    # of its training vectors. Simulate a large-data fit with an index that must never be touched.
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError("the approximate index was used")

    a.reducer._small_data, a.reducer._knn_search_index = False, Untouchable()
    proj._use_exact_transform(a.reducer)
    assert a.reducer._small_data and not hasattr(a.reducer, "_knn_search_index")
    assert a.transform(copies).shape == (3, 2)


# -- cache ------------------------------------------------------------------------------------------


def test_cache_hits_in_memory_then_on_disk_without_recomputing(tmp_path):
    v, labels = clustered()
    rows = rows_of(v, labels)
    params = ProjectionParams(method="pca")
    calls = []
    first = cached_projection(tmp_path, "M/1", rows, params, progress=lambda f, t: calls.append((f, t)))
    assert first.source == "computed" and calls and calls[-1][0] == 1.0
    assert len(list(tmp_path.glob("*.pkl"))) == 1

    calls.clear()
    again = cached_projection(tmp_path, "M/1", rows, params, progress=lambda f, t: calls.append((f, t)))
    assert again.source == "memory" and not calls

    proj.clear_memory_cache()  # as in a new process
    loaded = cached_projection(tmp_path, "M/1", list(reversed(rows)), params, progress=lambda f, t: calls.append(f))
    assert loaded.source == "disk" and not calls  # row order does not matter: rows are put in id order
    assert np.array_equal(loaded.coords, first.coords) and loaded.ids.tolist() == list(range(1, 31))
    assert np.allclose(loaded.transform(v[:2]), first.coords[:2], atol=1e-5)

    # Relabelling does not move a point, so it does not invalidate the map.
    relabelled = [{**r, "manufacturer": "Other"} for r in rows]
    assert cached_projection(tmp_path, "M/1", relabelled, params).source == "memory"
    # UMAP-only parameters do not change a PCA.
    assert cached_projection(tmp_path, "M/1", rows, ProjectionParams(method="pca", n_neighbors=5)).source == "memory"


def test_cache_invalidated_by_set_vectors_model_and_parameters(tmp_path):
    v, labels = clustered()
    rows = rows_of(v, labels)
    base = ProjectionParams(method="pca")
    assert cached_projection(tmp_path, "M/1", rows, base).source == "computed"
    changed_vector = [dict(r) for r in rows]
    changed_vector[3]["embedding"] = v[4]
    variants = [
        ("M/1", rows, base),
        ("M/1", rows[:-1], base),  # a reference deleted
        ("M/1", rows + rows_of(v[:1], labels[:1], first_id=99), base),  # one added
        ("M/1", changed_vector, base),  # re-embedded
        ("M/2", rows, base),  # another model
        ("M/1", rows, ProjectionParams(method="pca", n_components=3)),  # other parameters
        ("M/1", rows, ProjectionParams(method="umap", n_neighbors=5)),
        ("M/1", rows, ProjectionParams(method="umap", n_neighbors=5, min_dist=0.5)),
    ]
    keys = [fingerprint(m, [r["id"] for r in rs], np.stack([r["embedding"] for r in rs]), p) for m, rs, p in variants]
    assert len(set(keys)) == len(variants)
    for model_id, rs, params in variants[1:6]:
        assert cached_projection(tmp_path, model_id, rs, params).source == "computed"
    # Still cached (on disk: the in-process layer keeps only the last few).
    assert cached_projection(tmp_path, "M/1", rows, base).source == "disk"


def test_cache_survives_corrupt_files_and_prunes_old_ones(tmp_path, monkeypatch):
    v, labels = clustered()
    rows = rows_of(v, labels)
    params = ProjectionParams(method="pca")
    first = cached_projection(tmp_path, "M/1", rows, params)
    (path,) = tmp_path.glob("*.pkl")
    path.write_bytes(b"not a pickle")
    proj.clear_memory_cache()
    again = cached_projection(tmp_path, "M/1", rows, params)
    assert again.source == "computed" and np.allclose(again.coords, first.coords)

    monkeypatch.setattr(proj, "MAX_CACHE_FILES", 2)
    for n in (10, 12, 14, 16):
        cached_projection(tmp_path, "M/1", rows[:n], params)
    assert len(list(tmp_path.glob("*.pkl"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_cached_umap_round_trips_through_disk(tmp_path):
    v, labels = clustered()
    rows = rows_of(v, labels)
    params = ProjectionParams(method="umap", n_neighbors=8)
    first = cached_projection(tmp_path, "M/1", rows, params)
    proj.clear_memory_cache()
    loaded = cached_projection(tmp_path, "M/1", rows, params)
    assert loaded.source == "disk" and loaded.method == "umap"
    assert np.array_equal(loaded.coords, first.coords)
    assert loaded.transform(v[:1] * 1.0001).shape == (1, 2)


def test_projection_frame_joins_current_labels():
    v, labels = clustered(per=3)
    rows = rows_of(v, labels, first_id=5)
    p = project(v, "pca", 3, ids=[r["id"] for r in rows])
    rows[0]["manufacturer"] = "Renamed"
    df = projection_frame(p, rows)
    assert list(df.columns) == ["id", "manufacturer", "model", "diameter", "x", "y", "z"]
    assert df.loc[df["id"] == 5, "manufacturer"].item() == "Renamed"
    assert np.allclose(df[["x", "y", "z"]].to_numpy(), p.coords)
