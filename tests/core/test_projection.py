"""Projections: shapes, tiny sets, determinism, transform without refit (projection), and the in-memory and
on-disk cache (projection_cache)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from raiox_core import projection as proj
from raiox_core import projection_cache
from raiox_core.numba_cache import configure_numba_cache
from raiox_core.errors import InvalidInput, ReducerMissing, TooFewReferences
from raiox_core.projection import DeferredReducer, ProjectionParams, project, projection_frame
from raiox_core.projection_cache import cached_projection, fingerprint


def clustered(n_clusters=3, per=10, dim=32, spread=0.15, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    labels = np.repeat(np.arange(n_clusters), per)
    v = (centres[labels] + spread * rng.standard_normal((len(labels), dim))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True), labels


def rows_of(vectors, labels, first_id=1):
    return [{"id": first_id + i, "manufacturer": f"M{lab}", "model": "X", "diameter_mm": 4.0, "embedding": v}
            for i, (v, lab) in enumerate(zip(vectors, labels))]


def cache_files(cache_dir) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


def map_files(key) -> list[str]:
    """The two files of one cached map."""
    return [f"{key}.npz", f"{key}.reducer.pkl"]


@pytest.fixture(scope="module", autouse=True)
def numba_cache():
    configure_numba_cache()  # what the entry points do: umap's compiled kernels are reused across runs


@pytest.fixture(autouse=True)
def fresh_memory():
    projection_cache.clear_memory_cache()
    yield
    projection_cache.clear_memory_cache()


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
    with pytest.raises(InvalidInput):
        ProjectionParams(method="tsne")
    with pytest.raises(InvalidInput):
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
    assert cache_files(tmp_path) == map_files(first.fingerprint)

    calls.clear()
    again = cached_projection(tmp_path, "M/1", rows, params, progress=lambda f, t: calls.append((f, t)))
    assert again.source == "memory" and not calls

    projection_cache.clear_memory_cache()  # as in a new process
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
    for embedding_model, rs, params in variants[1:6]:
        assert cached_projection(tmp_path, embedding_model, rs, params).source == "computed"
    # Still cached (on disk: the in-process layer keeps only the last few).
    assert cached_projection(tmp_path, "M/1", rows, base).source == "disk"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickled"])
def test_a_corrupt_map_file_is_ignored_with_a_warning_removed_and_refitted(tmp_path, caplog, damage):
    v, labels = clustered()
    rows = rows_of(v, labels)
    params = ProjectionParams(method="pca")
    first = cached_projection(tmp_path, "M/1", rows, params)
    npz = tmp_path / f"{first.fingerprint}.npz"
    if damage == "garbage":
        npz.write_bytes(b"not an npz")
    elif damage == "truncated":
        npz.write_bytes(npz.read_bytes()[:100])
    else:  # a pickle where arrays belong must not be unpickled
        np.save(npz.open("wb"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    projection_cache.clear_memory_cache()
    with caplog.at_level(logging.WARNING, logger="raiox_core.projection_cache"):
        again = cached_projection(tmp_path, "M/1", rows, params)
    assert "Ignoring unreadable cached projection" in caplog.text
    assert again.source == "computed" and np.allclose(again.coords, first.coords)
    assert cache_files(tmp_path) == map_files(first.fingerprint)  # rewritten, no temporary files left
    projection_cache.clear_memory_cache()
    assert cached_projection(tmp_path, "M/1", rows, params).source == "disk"


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_lost_reducer_fails_the_placement_clearly_and_the_next_view_refits(tmp_path, damage):
    v, labels = clustered()
    rows = rows_of(v, labels)
    params = ProjectionParams(method="pca")
    first = cached_projection(tmp_path, "M/1", rows, params)
    projection_cache.clear_memory_cache()
    loaded = cached_projection(tmp_path, "M/1", rows, params)
    assert loaded.source == "disk"
    reducer_file = tmp_path / f"{first.fingerprint}.reducer.pkl"
    if damage == "missing":
        reducer_file.unlink()
    else:
        reducer_file.write_bytes(b"not a pickle")
    with pytest.raises(ReducerMissing, match="The cached map's reducer is missing; reopen the map to recompute it."):
        loaded.transform(v[:1])
    # The map is dropped from disk and from memory, and asking again does not touch the files again.
    assert cache_files(tmp_path) == []
    with pytest.raises(ReducerMissing):
        loaded.transform(v[:1])
    again = cached_projection(tmp_path, "M/1", rows, params)  # no clear_memory_cache: memory forgot it
    assert again.source == "computed" and np.array_equal(again.coords, first.coords)
    assert np.allclose(again.transform(v[:2]), first.coords[:2], atol=1e-5)
    assert cache_files(tmp_path) == map_files(first.fingerprint)


def test_a_map_whose_reducer_is_already_gone_is_refitted_when_loaded(tmp_path):
    v, labels = clustered()
    rows = rows_of(v, labels)
    params = ProjectionParams(method="pca")
    first = cached_projection(tmp_path, "M/1", rows, params)
    (tmp_path / f"{first.fingerprint}.reducer.pkl").unlink()
    projection_cache.clear_memory_cache()
    assert cached_projection(tmp_path, "M/1", rows, params).source == "computed"
    assert cache_files(tmp_path) == map_files(first.fingerprint)


def test_pruning_keeps_the_most_recently_used_maps_with_both_files(tmp_path, monkeypatch):
    v, labels = clustered()
    rows = rows_of(v, labels)
    params = ProjectionParams(method="pca")
    monkeypatch.setattr(projection_cache, "MAX_CACHE_FILES", 2)
    (tmp_path / ("0" * 64 + ".pkl")).write_bytes(b"a format-1 pickle")  # old format: deleted by the next save
    a, b = (cached_projection(tmp_path, "M/1", rows[:n], params) for n in (10, 12))
    now = time.time()
    for key, age in ((a.fingerprint, 20), (b.fingerprint, 10)):  # a used before b, whatever the clock resolution
        for name in map_files(key):
            os.utime(tmp_path / name, (now - age, now - age))
    projection_cache.clear_memory_cache()
    assert cached_projection(tmp_path, "M/1", rows[:10], params).source == "disk"  # a is now the most recent
    c = cached_projection(tmp_path, "M/1", rows[:14], params)
    assert cache_files(tmp_path) == sorted(map_files(a.fingerprint) + map_files(c.fingerprint))
    for n in (16, 18, 20):
        cached_projection(tmp_path, "M/1", rows[:n], params)
    assert len(list(tmp_path.glob("*.npz"))) == 2 and len(list(tmp_path.glob("*.reducer.pkl"))) == 2
    assert {p.name[:64] for p in tmp_path.iterdir()} == {p.stem[:64] for p in tmp_path.glob("*.npz")}


WARM_VIEW = textwrap.dedent("""
    import json, sys
    import numpy as np
    from raiox_core.projection import ProjectionParams
    from raiox_core.projection_cache import cached_projection

    cache_dir, vectors, params = sys.argv[1], np.load(sys.argv[2]), ProjectionParams(**json.loads(sys.argv[3]))
    p = cached_projection(cache_dir, "M/1", ids=np.arange(1, len(vectors) + 1), vectors=vectors, params=params)
    out = {"source": p.source, "coords": p.coords.tolist(), "ids": p.ids.tolist(), "umap_after_view": "umap" in sys.modules}
    out["placed"] = p.transform(np.load(sys.argv[4])).tolist()
    out["umap_after_transform"] = "umap" in sys.modules
    print(json.dumps(out))
""")


def test_a_warm_view_reads_coordinates_only_and_imports_umap_when_a_query_is_placed(tmp_path):
    """A fresh process (as after a restart): the cached map comes without umap, which the first
    transform imports. UMAP's transform is deterministic here (a fixed transform_seed and, with
    random_state set, a single-threaded layout), so the unpickled reducer places a query exactly
    where the original did."""
    v, labels = clustered()
    params = ProjectionParams(method="umap", n_neighbors=8)
    cache_dir = tmp_path / "projections"
    first = cached_projection(cache_dir, "M/1", ids=np.arange(1, 31), vectors=v, params=params)
    queries = v[[0, 11, 22]] * 1.0001
    expected = first.transform(queries)
    np.save(tmp_path / "vectors.npy", v)
    np.save(tmp_path / "queries.npy", queries)
    done = subprocess.run(
        [sys.executable, "-c", WARM_VIEW, str(cache_dir), str(tmp_path / "vectors.npy"),
         json.dumps({"method": "umap", "n_neighbors": 8}), str(tmp_path / "queries.npy")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["source"] == "disk" and out["umap_after_view"] is False
    assert np.array_equal(np.asarray(out["coords"], dtype=np.float32), first.coords)
    assert out["ids"] == first.ids.tolist()
    assert out["umap_after_transform"] is True
    assert np.allclose(out["placed"], expected, atol=1e-4)


def test_cached_umap_round_trips_through_disk(tmp_path):
    v, labels = clustered()
    rows = rows_of(v, labels)
    params = ProjectionParams(method="umap", n_neighbors=8)
    first = cached_projection(tmp_path, "M/1", rows, params)
    projection_cache.clear_memory_cache()
    loaded = cached_projection(tmp_path, "M/1", rows, params)
    assert loaded.source == "disk" and loaded.method == "umap"
    assert np.array_equal(loaded.coords, first.coords)
    assert loaded.transform(v[:1] * 1.0001).shape == (1, 2)


def test_a_map_from_disk_reads_its_reducer_once_when_a_query_is_first_placed(tmp_path, monkeypatch):
    import dataclasses
    import inspect
    import pickle

    from raiox_core.projection import Projection

    v, labels = clustered()
    rows = rows_of(v, labels)
    params = ProjectionParams(method="pca")
    first = cached_projection(tmp_path, "M/1", rows, params)
    assert not isinstance(first.reducer, DeferredReducer) and first.fitted_reducer() is first.reducer
    projection_cache.clear_memory_cache()
    unpickled = []
    real_load = pickle.load
    monkeypatch.setattr(pickle, "load", lambda f: unpickled.append(f.name) or real_load(f))
    loaded = cached_projection(tmp_path, "M/1", rows, params)
    again = cached_projection(tmp_path, "M/1", rows, params)
    assert (loaded.source, again.source) == ("disk", "memory")
    assert isinstance(loaded.reducer, DeferredReducer) and again.reducer is loaded.reducer and not unpickled
    assert np.allclose(again.transform(v[:2]), first.coords[:2], atol=1e-5)
    assert np.allclose(loaded.transform(v[2:4]), first.coords[2:4], atol=1e-5)
    assert len(unpickled) == 1 and loaded.fitted_reducer() is again.fitted_reducer()
    assert type(loaded.fitted_reducer()) is type(first.reducer)
    # `reducer` is an ordinary dataclass field: nothing is installed on the class after its definition.
    assert "reducer" in {f.name for f in dataclasses.fields(Projection)}
    assert inspect.getattr_static(Projection, "reducer", None) is None


NO_NUMBA_SIDE_EFFECTS = textwrap.dedent("""
    import json, os
    import numpy as np
    from raiox_core import projection, projection_cache
    from raiox_core.projection import ProjectionParams

    p = projection_cache.cached_projection(os.environ["CACHE"], "M/1", ids=[1, 2, 3], vectors=np.eye(3, 8),
                                           params=ProjectionParams(method="pca"))
    p.transform(np.ones(8))
    before = os.environ.get("NUMBA_CACHE_DIR")
    from raiox_core.numba_cache import configure_numba_cache
    configure_numba_cache()
    print(json.dumps({"before": before, "after": os.environ.get("NUMBA_CACHE_DIR")}))
""")


def test_numba_is_configured_by_the_entry_points_not_on_import_or_fit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), CACHE=str(tmp_path / "projections"))
    done = subprocess.run([sys.executable, "-c", NO_NUMBA_SIDE_EFFECTS], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"before": None, "after": str(tmp_path / "xdg" / "raiox" / "numba")}
    assert (tmp_path / "xdg" / "raiox" / "numba").is_dir()


def test_configure_numba_cache_keeps_a_directory_already_chosen(tmp_path, monkeypatch):
    from raiox_core.numba_cache import configure_numba_cache, numba_cache_dir

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "chosen"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    configure_numba_cache()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "chosen") == str(numba_cache_dir())
    assert not (tmp_path / "xdg").exists()
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    (tmp_path / "xdg").write_text("a file where the directory would go")  # cannot be created: numba's default
    configure_numba_cache()
    assert "NUMBA_CACHE_DIR" not in os.environ


def test_projection_frame_joins_current_labels():
    v, labels = clustered(per=3)
    rows = rows_of(v, labels, first_id=5)
    p = project(v, "pca", 3, ids=[r["id"] for r in rows])
    rows[0]["manufacturer"] = "Renamed"
    df = projection_frame(p, rows)
    assert list(df.columns) == ["id", "manufacturer", "model", "diameter", "x", "y", "z"]
    assert df.loc[df["id"] == 5, "manufacturer"].item() == "Renamed"
    assert np.allclose(df[["x", "y", "z"]].to_numpy(), p.coords)
