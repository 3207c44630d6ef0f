"""2-D/3-D maps of the reference vectors: fitting UMAP or PCA, and placing new vectors on a fitted map.

A projection keeps its fitted reducer, so a query image can be placed on an existing map with the
reducer's `transform` instead of refitting (which would move every point). Keeping fitted maps between
calls and processes is `projection_cache`'s job; numba's compiled-code directory, which makes umap's
import seconds instead of a minute, is set up by the entry points (`numba_cache.configure_numba_cache`);
umap's own kernels join it here (`numba_cache.cache_umap_kernels`).
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import InvalidInput, TooFewReferences
from .grouping import best_per_row, unit_rows
from .numba_cache import cache_umap_kernels

METHODS = ("umap", "pca")
METRICS = ("cosine", "euclidean", "correlation")
MIN_UMAP_POINTS = 5  # below this UMAP's graph is meaningless (and its spectral start fails): PCA instead

Progress = Callable[[float, str], None]


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
            raise InvalidInput(f"The projection method is one of {', '.join(METHODS)}, not {self.method!r}.")
        if self.n_components not in (2, 3):
            raise InvalidInput("A map has 2 or 3 dimensions.")
        if self.n_neighbors < 2:
            raise InvalidInput("UMAP needs at least 2 neighbours.")
        if not 0.0 <= self.min_dist <= 1.0:
            raise InvalidInput("UMAP's minimum distance is between 0 and 1.")
        if self.metric not in METRICS:
            raise InvalidInput(f"The metric is one of {', '.join(METRICS)}, not {self.metric!r}.")

    def key(self) -> dict:
        """The parameters that change the result: PCA ignores the UMAP ones, so moving a UMAP slider
        while PCA is shown does not recompute anything."""
        if self.method == "pca":
            return {"method": "pca", "n_components": self.n_components}
        return asdict(self)


class DeferredReducer(ABC):
    """A fitted reducer that is read when first needed rather than up front (a map from the disk cache
    keeps its reducer in a file: see projection_cache)."""

    @abstractmethod
    def load(self):
        """The fitted reducer: the same object on every call."""


@dataclass
class Projection:
    """Coordinates of the references (rows in the order of `ids`) and the reducer that made them.

    `reducer` is the fitted reducer, or a DeferredReducer standing for it; `fitted_reducer()` returns
    the reducer itself in both cases, loading a deferred one on first use.
    """

    coords: np.ndarray  # (n, n_components) float32
    ids: np.ndarray  # (n,) int64, ascending
    params: ProjectionParams  # as asked
    method: str  # as used: "pca" when a tiny set made UMAP impossible
    n_neighbors: int | None  # as used by UMAP after clamping to the set's size; None for PCA
    reducer: object = field(repr=False, compare=False)  # the fitted reducer or a DeferredReducer
    fingerprint: str = ""  # the cache key, set by projection_cache
    note: str | None = None  # one sentence for the user when the parameters were adjusted
    seconds: float = 0.0  # time the fit took when it was computed
    source: str = "computed"  # "computed", "disk" or "memory": where projection_cache got it from

    @property
    def n_components(self) -> int:
        return self.coords.shape[1]

    def fitted_reducer(self):
        """The fitted reducer; a deferred one is loaded now (on first use: later calls reuse it)."""
        reducer = self.reducer
        return reducer.load() if isinstance(reducer, DeferredReducer) else reducer

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Place new vectors on this map without refitting: (m, n_components) float32."""
        x = unit_rows(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
        reducer = self.fitted_reducer()
        if self.method == "umap":
            cache_umap_kernels()  # the reducer's unpickling imported umap: placing compiles its kernels
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                out = reducer.transform(x)
        else:
            out = reducer.transform(x)
        return _pad(np.asarray(out, dtype=np.float32), self.n_components)



def _pad(coords: np.ndarray, n_components: int) -> np.ndarray:
    """PCA of n points has at most n-1 informative axes: missing axes are zeros, so shapes never vary."""
    if coords.shape[1] >= n_components:
        return coords[:, :n_components]
    return np.hstack([coords, np.zeros((coords.shape[0], n_components - coords.shape[1]), dtype=np.float32)])


def notify(progress: Progress | None, fraction: float, text: str) -> None:
    """Call `progress(fraction, text)` when there is a progress callback."""
    if progress is not None:
        progress(fraction, text)


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
    x = unit_rows(np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1))
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
        notify(progress, 0.2, "Fitting PCA…")
        reducer, coords = _fit_pca(x, params)
    notify(progress, 0.9, "Projection fitted.")
    return Projection(
        coords=_pad(np.asarray(coords, dtype=np.float32), params.n_components), ids=ids_arr, params=params,
        method=method, n_neighbors=used_neighbors, reducer=reducer, note=note,
        seconds=time.perf_counter() - started,
    )


def _fit_pca(x: np.ndarray, params: ProjectionParams):
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    # The 512 x 512 covariance's eigenvectors: exact and deterministic like a full SVD, but one matrix product
    # (0.3 s at 10k where the SVD took 38 s under load). One BLAS thread: on this project's 2 shared cores,
    # two threads waiting for each other made the same product 10x slower when other work ran.
    solver = "covariance_eigh" if len(x) > x.shape[1] else "full"
    reducer = PCA(n_components=min(params.n_components, len(x), x.shape[1]), svd_solver=solver)
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a single point has no variance to explain
        return reducer, reducer.fit_transform(x)


EXACT_KNN_MAX = 30_000  # up to here the neighbours are one exact matrix product (1 s at 10k), beyond it pynndescent
FAST_EPOCHS = 200  # umap's own default above 10k points; it uses 500 up to 10k, 2.5x the time for no visible gain
FIT_REVISION = 2  # in the cache key: bump when the fit below changes what a map looks like (2: exact kNN, PCA start)


def _exact_knn(x: np.ndarray, k: int, metric: str, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of each row's k nearest rows, itself first, by blocks of one matrix product.

    Rows are unit vectors, so cosine distance is 1 - dot, euclidean sqrt(2 - 2 dot), and correlation is the
    cosine of the centred rows. Measured at 10k: this plus the PCA start and FAST_EPOCHS fits in 14 s where
    umap's defaults (pynndescent, spectral start, 500 epochs) took 66 s, and pynndescent's kernels are
    never compiled.
    """
    from threadpoolctl import threadpool_limits

    if metric == "correlation":
        x = unit_rows(x - x.mean(axis=1, keepdims=True))
    indices = np.empty((len(x), k), dtype=np.int64)
    distances = np.empty((len(x), k), dtype=np.float32)
    for start in range(0, len(x), chunk):
        with threadpool_limits(1, user_api="blas"):  # see _fit_pca: one thread beats two on shared cores
            sim = x[start:start + chunk] @ x.T
        rows = np.arange(len(sim))
        sim[rows, start + rows] = np.inf  # itself first whatever rounding does
        indices[start:start + chunk], top = best_per_row(sim, k)
        top = np.minimum(top, 1.0)
        distances[start:start + chunk] = np.sqrt(np.maximum(2 - 2 * top, 0)) if metric == "euclidean" else 1 - top
    return indices, np.maximum(distances, 0.0)


class _EpochProgress:
    """A file for umap's tqdm bar (formatted "{n}/{total}"): each epoch count becomes a progress report."""

    def __init__(self, progress: Progress | None, low: float, high: float) -> None:
        self.progress, self.low, self.high = progress, low, high

    def write(self, text: str) -> None:
        done, _, total = text.strip().rpartition("\r")[2].partition("/")
        if done.isdigit() and total.isdigit() and int(total):
            share = int(done) / int(total)
            notify(self.progress, self.low + (self.high - self.low) * share,
                   f"Fitting UMAP: epoch {done} of {total}…")

    def flush(self) -> None:
        pass


def _fit_umap(x: np.ndarray, params: ProjectionParams, n_neighbors: int, progress: Progress | None):
    notify(progress, 0.05, "Loading UMAP (the first time in a process compiles it: up to a minute)…")
    import umap

    cache_umap_kernels()
    options = {}
    if 4096 <= len(x) <= EXACT_KNN_MAX:  # below 4096 umap computes exact distances itself
        notify(progress, 0.15, f"Finding the {n_neighbors} nearest neighbours of {len(x)} references…")
        options["precomputed_knn"] = _exact_knn(x, n_neighbors, params.metric)
    reducer = umap.UMAP(
        n_components=params.n_components, n_neighbors=n_neighbors, min_dist=params.min_dist,
        metric=params.metric, random_state=params.seed,
        # A PCA start instead of the spectral one: scipy's eigensolver took most of a minute at 10k.
        # Tiny sets get a random start (PCA of a handful of points can put several on one spot).
        init="pca" if len(x) > 2 * (params.n_components + 1) else "random",
        n_epochs=FAST_EPOCHS if len(x) >= 4096 else None,
        tqdm_kwds={"disable": progress is None, "file": _EpochProgress(progress, 0.3, 0.9),
                   "bar_format": "{n}/{total}", "mininterval": 0.5},
        verbose=False, **options,
    )
    notify(progress, 0.3, f"Fitting UMAP on {len(x)} references (n_neighbors={n_neighbors})…")
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state": intended, for reproducible maps.
        warnings.simplefilter("ignore", UserWarning)
        coords = reducer.fit_transform(x)
    reducer.tqdm_kwds = {"disable": True}  # the progress file holds the caller's callback: not to be pickled
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
