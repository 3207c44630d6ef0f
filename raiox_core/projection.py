"""2-D/3-D maps of the reference vectors (UMAP or PCA), fitted once per reference set and cached on disk.

A projection keeps its fitted reducer, so a query image can be placed on an existing map with the
reducer's `transform` instead of refitting (which would move every point). Fitted projections are
cached under `<data_dir>/projections/`, keyed by a fingerprint of the model id, the reference ids and
their vectors, the parameters and the library versions: a new map is computed only when one of those
changes. Each map is two files: `<key>.npz` holds the coordinates, the ids and a little JSON metadata
(plain numpy arrays, read without pickle), and `<key>.reducer.pkl` holds the pickled reducer. A view
reads only the npz; the reducer is unpickled (which imports umap, numba and pynndescent: seconds) the
first time a query is placed on the map. A small in-process layer in front of the disk saves even the
npz read on Streamlit's reruns.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import pickle
import threading
import time
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import RaioxError
from .files import atomic_file

log = logging.getLogger(__name__)

METHODS = ("umap", "pca")
METRICS = ("cosine", "euclidean", "correlation")
MIN_UMAP_POINTS = 5  # below this UMAP's graph is meaningless (and its spectral start fails): PCA instead
CACHE_FORMAT = 2  # bump when the cached files' shape changes, so old files are simply not found (2: npz + reducer)
MAX_CACHE_FILES = 24  # maps (npz + reducer file each) kept on disk; the least recently used are deleted after a save
MEMORY_ENTRIES = 4

Progress = Callable[[float, str], None]


class TooFewReferences(RaioxError):
    """Not enough reference vectors to build a map or an evaluation."""


class ReducerMissing(RaioxError):
    """A map loaded from the cache cannot place new points: its reducer file is gone or unreadable."""


@dataclass(frozen=True)
class ProjectionParams:
    """What the user chose. n_neighbors, min_dist and metric only matter for UMAP."""

    method: str = "umap"
    n_components: int = 2
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    seed: int = 42

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.n_components not in (2, 3):
            raise ValueError("n_components must be 2 or 3")
        if self.n_neighbors < 2:
            raise ValueError("n_neighbors must be at least 2")
        if not 0.0 <= self.min_dist <= 1.0:
            raise ValueError("min_dist must be between 0 and 1")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {self.metric!r}")

    def key(self) -> dict:
        """The parameters that change the result: PCA ignores the UMAP ones, so moving a UMAP slider
        while PCA is shown does not recompute anything."""
        if self.method == "pca":
            return {"method": "pca", "n_components": self.n_components}
        return asdict(self)


@dataclass
class Projection:
    """Coordinates of the references (rows in the order of `ids`) and the reducer that made them.

    `reducer` is the fitted reducer. A map loaded from the disk cache is given a `_ReducerFile` in its
    place, and reading `reducer` (which `transform` does) unpickles it then; see `_ReducerFile`.
    """

    coords: np.ndarray  # (n, n_components) float32
    ids: np.ndarray  # (n,) int64, ascending
    params: ProjectionParams  # as asked
    method: str  # as used: "pca" when a tiny set made UMAP impossible
    n_neighbors: int | None  # as used by UMAP after clamping to the set's size; None for PCA
    reducer: object = field(repr=False, compare=False)  # a property, defined below the class
    fingerprint: str = ""
    note: str | None = None  # one sentence for the user when the parameters were adjusted
    seconds: float = 0.0  # time the fit took when it was computed
    source: str = "computed"  # "computed", "disk" or "memory": where this call got it from

    @property
    def n_components(self) -> int:
        return self.coords.shape[1]

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Place new vectors on this map without refitting: (m, n_components) float32."""
        x = _unit(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
        if self.method == "umap":
            _ensure_numba_cache()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                out = self.reducer.transform(x)
        else:
            out = self.reducer.transform(x)
        return _pad(np.asarray(out, dtype=np.float32), self.n_components)

    def _with_source(self, source: str) -> Projection:
        """A shallow copy saying where this call got the map. Unlike dataclasses.replace, it does not
        read `reducer`, so a lazy reducer stays unloaded (the copy shares its `_ReducerFile`)."""
        out = copy.copy(self)
        out.source = source
        return out


def _get_reducer(self: Projection):
    value = self.__dict__["reducer"]
    return value.load() if isinstance(value, _ReducerFile) else value


def _set_reducer(self: Projection, value) -> None:
    self.__dict__["reducer"] = value


# Installed after @dataclass so that the generated __init__ (`self.reducer = reducer`) stores through the
# setter, while the class attribute dataclass saw while building the class was a plain field.
Projection.reducer = property(_get_reducer, _set_reducer, doc="The fitted reducer (unpickled on first use for a "
                                                              "map loaded from the disk cache).")


def as_vector(value) -> np.ndarray:
    """A float32 array from a stored embedding: pgvector returns `Vector` objects for the untyped column."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    """Stored vectors are unit length already; renormalising keeps cosine geometry exact for PCA."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _pad(coords: np.ndarray, n_components: int) -> np.ndarray:
    """PCA of n points has at most n-1 informative axes: missing axes are zeros, so shapes never vary."""
    if coords.shape[1] >= n_components:
        return coords[:, :n_components]
    return np.hstack([coords, np.zeros((coords.shape[0], n_components - coords.shape[1]), dtype=np.float32)])


def _notify(progress: Progress | None, fraction: float, text: str) -> None:
    if progress is not None:
        progress(fraction, text)


def numba_cache_dir() -> Path:
    """Where numba keeps compiled code between processes: $NUMBA_CACHE_DIR, else ~/.cache/raiox/numba."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "raiox" / "numba"


def _ensure_numba_cache() -> None:
    """Point numba's on-disk cache at a writable per-user directory before umap is first imported.

    Importing umap compiles pynndescent's kernels (about 30 s cold, 6 s from this cache). numba reads
    the variable at import time, so this must run before the first `import umap` in the process.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    path = numba_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # numba falls back to __pycache__ next to its sources
    os.environ["NUMBA_CACHE_DIR"] = str(path)


def project(
    vectors: np.ndarray,
    method: str = "umap",
    n_components: int = 2,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    seed: int = 42,
    *,
    ids: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> Projection:
    """Fit UMAP or PCA to (n, dim) vectors and return the coordinates with the fitted reducer.

    Tiny sets are handled rather than refused: UMAP's n_neighbors is clamped to n - 1, and below
    MIN_UMAP_POINTS vectors PCA is used instead; `Projection.note` says so. Raises TooFewReferences
    for an empty set. Deterministic for a given seed (UMAP then runs single-threaded).
    """
    params = ProjectionParams(method, n_components, n_neighbors, min_dist, metric, seed)
    if len(vectors) == 0:
        raise TooFewReferences("There are no reference vectors to project.")
    x = _unit(np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1))
    n = len(x)
    ids_arr = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    started = time.perf_counter()
    note = None
    used_neighbors = None
    if params.method == "umap" and n < MIN_UMAP_POINTS:
        note = f"UMAP needs at least {MIN_UMAP_POINTS} references; with {n} the map is a PCA."
        method = "pca"
    else:
        method = params.method
    if method == "umap":
        used_neighbors = min(params.n_neighbors, n - 1)
        if used_neighbors < params.n_neighbors:
            note = f"n_neighbors lowered from {params.n_neighbors} to {used_neighbors}: there are only {n} references."
        reducer, coords = _fit_umap(x, params, used_neighbors, progress)
    else:
        _notify(progress, 0.2, "Fitting PCA…")
        reducer, coords = _fit_pca(x, params)
    _notify(progress, 0.9, "Projection fitted.")
    return Projection(
        coords=_pad(np.asarray(coords, dtype=np.float32), params.n_components), ids=ids_arr, params=params,
        method=method, n_neighbors=used_neighbors, reducer=reducer, note=note,
        seconds=time.perf_counter() - started,
    )


def _fit_pca(x: np.ndarray, params: ProjectionParams):
    from sklearn.decomposition import PCA

    # Full SVD is exact and deterministic (no random solver), and fast at 512 dimensions.
    reducer = PCA(n_components=min(params.n_components, len(x), x.shape[1]), svd_solver="full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a single point has no variance to explain
        return reducer, reducer.fit_transform(x)


def _fit_umap(x: np.ndarray, params: ProjectionParams, n_neighbors: int, progress: Progress | None):
    _ensure_numba_cache()
    _notify(progress, 0.05, "Loading UMAP (the first time in a process compiles it: up to a minute)…")
    import umap

    reducer = umap.UMAP(
        n_components=params.n_components, n_neighbors=n_neighbors, min_dist=params.min_dist,
        metric=params.metric, random_state=params.seed,
        # Spectral initialisation needs more points than components + 1 per connected piece; tiny sets
        # get a random start instead of UMAP's warning-and-fallback.
        init="spectral" if len(x) > 2 * (params.n_components + 1) else "random",
    )
    _notify(progress, 0.2, f"Fitting UMAP on {len(x)} references (n_neighbors={n_neighbors})…")
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state": intended, for reproducible maps.
        warnings.simplefilter("ignore", UserWarning)
        coords = reducer.fit_transform(x)
    _use_exact_transform(reducer)
    return reducer, coords


def _use_exact_transform(reducer) -> None:
    """Make a fitted UMAP place new points by exact neighbours instead of its pynndescent index.

    Above 4096 points UMAP keeps an approximate search index for `transform`. Pickling it compiles
    pynndescent's search kernels (minutes on two cores) and the file grows by the index; yet one query
    against 20k training vectors is a millisecond-scale exact search, which UMAP already does for small
    sets from the training data it keeps (`_raw_data`). So switch the reducer to that path.
    """
    if getattr(reducer, "_small_data", True) or not hasattr(reducer, "_raw_data"):
        return
    reducer._small_data = True
    if hasattr(reducer, "_knn_search_index"):
        del reducer._knn_search_index  # absent (not None) is what transform expects of the exact path


# -- cache ------------------------------------------------------------------------------------------


def fingerprint(model_id: str, ids: Sequence[int], vectors: np.ndarray, params: ProjectionParams) -> str:
    """A hex digest that changes when the model, the reference set, any vector, the parameters or the
    fitting libraries change.

    The vectors themselves are hashed (about 0.1 s for 20k x 512) rather than, say, the newest
    created_at: re-embedding references with new weights under the same model id changes vectors
    without adding rows, and labels are deliberately left out because they do not move any point
    (the page joins the current labels onto the cached coordinates).
    """
    header = {
        "format": CACHE_FORMAT, "model_id": model_id, "params": params.key(), "n": len(ids),
        "versions": {pkg: _version(pkg) for pkg in ("umap-learn", "scikit-learn", "numpy")},
        "data": vectors_digest(ids, vectors),
    }
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def vectors_digest(ids: Sequence[int], vectors: np.ndarray) -> str:
    """sha256 of the ids and the float32 vectors, in the order given."""
    digest = hashlib.sha256()
    digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


_memory: OrderedDict[str, Projection] = OrderedDict()
_memory_lock = threading.Lock()
_fit_locks: dict[str, threading.Lock] = {}


def clear_memory_cache() -> None:
    """Forget the in-process layer (tests; the disk cache stays)."""
    with _memory_lock:
        _memory.clear()


def _remember(projection: Projection) -> None:
    with _memory_lock:
        _memory[projection.fingerprint] = projection
        _memory.move_to_end(projection.fingerprint)
        while len(_memory) > MEMORY_ENTRIES:
            _memory.popitem(last=False)


def _recall(key: str) -> Projection | None:
    with _memory_lock:
        found = _memory.get(key)
        if found is not None:
            _memory.move_to_end(key)
        return found


def _fit_lock(key: str) -> threading.Lock:
    # Streamlit sessions are threads of one process: two viewers asking for the same new map wait for
    # one fit instead of running two.
    with _memory_lock:
        return _fit_locks.setdefault(key, threading.Lock())


def _forget(key: str) -> None:
    with _memory_lock:
        _memory.pop(key, None)


def _map_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.npz"


def _reducer_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.reducer.pkl"


# What reading a damaged pickle or npz can raise (zipfile.BadZipFile: a truncated npz).
_UNREADABLE = (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError,
               KeyError, IndexError, zipfile.BadZipFile)


class _ReducerFile:
    """The reducer of a map loaded from the disk cache: unpickled on first use, then kept.

    Every copy of the Projection (the memory layer's, each call's `_with_source`) shares one instance,
    so the file is read at most once per process. The files are written only by this module under the
    app's own data directory, which must be as private as the database next to it: unpickling runs
    code from the file.

    A missing or unreadable reducer file is deliberately not refitted here: a refit would make a new
    map whose points need not sit where the page already drew them, so the query would be placed on
    a map the user is not looking at. Instead the whole map is dropped (its files deleted, the memory
    layer told to forget it) and ReducerMissing asks the user to reopen it: the next cached_projection
    call then fits map and reducer together and shows that it is computing.
    """

    def __init__(self, path: Path, map_path: Path, key: str) -> None:
        self.path, self.map_path, self.key = path, map_path, key
        self._lock = threading.Lock()
        self._loaded = False
        self._failed = False
        self._value = None

    def load(self):
        with self._lock:
            if self._failed:  # do not touch the files again: a refit may have written new ones by now
                raise ReducerMissing("The cached map's reducer is missing; reopen the map to recompute it.")
            if not self._loaded:
                self._value = self._read()
                self._loaded = True
            return self._value

    def _read(self):
        _ensure_numba_cache()  # unpickling a UMAP imports umap, and with it numba
        try:
            with self.path.open("rb") as f:
                value = pickle.load(f)
            if not hasattr(value, "transform"):
                raise TypeError(f"a {type(value).__name__} is not a fitted reducer")
        except FileNotFoundError:
            log.warning("The cached map %s has no reducer file; dropping the map.", self.map_path.name)
        except _UNREADABLE as exc:
            log.warning("Ignoring unreadable cached reducer %s: %s", self.path.name, exc)
        else:
            _touch(self.path)
            return value
        self._failed = True
        self.path.unlink(missing_ok=True)
        self.map_path.unlink(missing_ok=True)
        _forget(self.key)
        raise ReducerMissing("The cached map's reducer is missing; reopen the map to recompute it.")


def _touch(path: Path) -> None:
    try:
        os.utime(path)  # mtime = last use, for pruning
    except OSError:
        pass


def _load(cache_dir: Path, key: str) -> Projection | None:
    """The cached map, or None when absent or unreadable (a bad file is removed with its reducer, then
    refitted). Only the npz is read, without pickle; the reducer stays on disk until it is used.

    A map whose reducer file is already gone counts as absent (one stat): refitting now, while the page
    shows it is computing, beats failing later when a query is placed.
    """
    path, reducer_path = _map_path(cache_dir, key), _reducer_path(cache_dir, key)
    try:
        with np.load(path, allow_pickle=False) as data:
            coords = np.asarray(data["coords"], dtype=np.float32)
            ids = np.asarray(data["ids"], dtype=np.int64)
            meta = json.loads(str(data["meta"][()]))
        if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != key:
            raise ValueError("it belongs to another format or fingerprint")
        if coords.ndim != 2 or coords.shape[1] not in (2, 3) or ids.shape != (len(coords),):
            raise ValueError(f"coordinates {coords.shape} do not match ids {ids.shape}")
        params = ProjectionParams(**meta["params"])
        found = Projection(
            coords=coords, ids=ids, params=params, method=meta["method"], n_neighbors=meta["n_neighbors"],
            reducer=_ReducerFile(reducer_path, path, key), fingerprint=key, note=meta["note"],
            seconds=float(meta["seconds"]), source="disk",
        )
    except FileNotFoundError:
        return None
    except _UNREADABLE as exc:
        log.warning("Ignoring unreadable cached projection %s: %s", path.name, exc)
        path.unlink(missing_ok=True)
        reducer_path.unlink(missing_ok=True)
        return None
    if not reducer_path.exists():
        log.warning("The cached map %s has no reducer file; recomputing it.", path.name)
        path.unlink(missing_ok=True)
        return None
    _touch(path)
    return found


def _save(cache_dir: Path, projection: Projection) -> None:
    """Write the reducer file, then the npz, each atomically, so that a map found by its npz has its
    reducer; then prune the least recently used maps."""
    cache_dir = Path(cache_dir)
    key = projection.fingerprint
    meta = {
        "format": CACHE_FORMAT, "fingerprint": key, "params": asdict(projection.params),
        "method": projection.method, "n_neighbors": projection.n_neighbors, "note": projection.note,
        "seconds": projection.seconds,
    }
    reducer = projection.reducer
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(_reducer_path(cache_dir, key)) as f:
            pickle.dump(reducer, f, protocol=pickle.HIGHEST_PROTOCOL)
        with atomic_file(_map_path(cache_dir, key)) as f:
            np.savez(f, coords=np.asarray(projection.coords, dtype=np.float32),
                     ids=np.asarray(projection.ids, dtype=np.int64), meta=np.array(json.dumps(meta)))
    except OSError as exc:
        # A read-only or full disk costs a refit next time, not the page.
        log.warning("Could not cache the projection in %s: %s", cache_dir, exc)
        return
    _prune(cache_dir)


def _prune(cache_dir: Path) -> None:
    """Keep the MAX_CACHE_FILES most recently used maps (a map's last use is the newest mtime of its npz
    and reducer file) and delete the others' files; delete format-1 files (`<key>.pkl`, a whole pickled
    Projection) outright. Names starting with a dot are files being written."""
    maps: dict[str, list[Path]] = {}
    try:
        for path in cache_dir.iterdir():
            name = path.name
            if name.startswith("."):
                continue
            if name.endswith(".reducer.pkl"):
                maps.setdefault(name[: -len(".reducer.pkl")], []).append(path)
            elif name.endswith(".npz"):
                maps.setdefault(name[: -len(".npz")], []).append(path)
            elif name.endswith(".pkl"):
                path.unlink(missing_ok=True)

        def last_used(paths: list[Path]) -> float:
            times = []
            for path in paths:
                try:
                    times.append(path.stat().st_mtime)
                except OSError:
                    pass
            return max(times, default=0.0)

        for paths in sorted(maps.values(), key=last_used, reverse=True)[MAX_CACHE_FILES:]:
            for path in paths:
                path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("Could not prune the projection cache in %s: %s", cache_dir, exc)


def cached_projection(
    cache_dir: Path | str,
    model_id: str,
    rows: Sequence[dict] | None = None,
    params: ProjectionParams = ProjectionParams(),
    progress: Progress | None = None,
    *,
    ids: Sequence[int] | None = None,
    vectors: np.ndarray | None = None,
) -> Projection:
    """The projection of one model's references: from memory, from `cache_dir`, or fitted and saved.

    Pass either `rows` (as returned by Database.embeddings: dicts with "id" and "embedding") or
    `ids` and `vectors`. Rows are put in id order first, so the result does not depend on the order
    they came in. `progress(fraction, text)` is called only when a projection is actually fitted, so
    a caller can show a progress indicator just for that case. `Projection.source` says which path
    was taken.
    """
    if rows is not None:
        ids = [r["id"] for r in rows]
        vectors = np.stack([as_vector(r["embedding"]) for r in rows]) if rows else np.empty((0, 0))
    if ids is None or vectors is None:
        raise ValueError("pass rows, or ids and vectors")
    ids_arr = np.asarray(ids, dtype=np.int64)
    if len(ids_arr) == 0:
        raise TooFewReferences(f"There are no reference vectors of {model_id} to project.")
    order = np.argsort(ids_arr, kind="stable")
    ids_arr = ids_arr[order]
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[order])
    key = fingerprint(model_id, ids_arr, x, params)

    if (found := _recall(key)) is not None:
        return found._with_source("memory")
    with _fit_lock(key):
        if (found := _recall(key)) is not None:  # fitted by another thread while we waited
            return found._with_source("memory")
        if (found := _load(Path(cache_dir), key)) is not None:
            _remember(found)
            return found._with_source("disk")
        _notify(progress, 0.0, f"Computing a {params.method.upper()} map of {len(ids_arr)} references…")
        fitted = project(x, **asdict(params), ids=ids_arr, progress=progress)
        fitted.fingerprint = key
        _notify(progress, 0.95, "Saving the map for next time…")
        _save(Path(cache_dir), fitted)
        _remember(fitted)
        _notify(progress, 1.0, f"Map computed in {fitted.seconds:.1f} s.")
        return fitted


def projection_frame(projection: Projection, rows, extra: Sequence[str] = ()):
    """A DataFrame of id, manufacturer, model, diameter, x, y[, z] (the download's columns), plus any
    `extra` columns of `rows`.

    `rows` is a list of dicts or a DataFrame with id, manufacturer, model and diameter_mm. The current
    labels are joined on id, so a relabelled reference shows its new label on a cached map.
    """
    import pandas as pd

    axes = ["x", "y", "z"][: projection.n_components]
    coords = pd.DataFrame(projection.coords, columns=axes)
    coords.insert(0, "id", projection.ids)
    labels = pd.DataFrame(rows)
    if labels.empty:
        labels = pd.DataFrame(columns=["id", "manufacturer", "model", "diameter_mm", *extra])
    labels = labels[["id", "manufacturer", "model", "diameter_mm", *extra]].rename(columns={"diameter_mm": "diameter"})
    labels["id"] = labels["id"].astype("int64")
    return labels.merge(coords, on="id", how="inner")[["id", "manufacturer", "model", "diameter", *axes, *extra]]
