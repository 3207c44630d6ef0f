"""Fitted projections kept between calls and processes: in memory, and on disk under `<data_dir>/projections/`.

A map is keyed by a fingerprint of the model id, the reference ids and their vectors, the parameters and
the library versions: a new map is fitted (`projection.project`) only when one of those changes. Each map
is two files: `<key>.npz` holds the coordinates, the ids and a little JSON metadata (plain numpy arrays,
read without pickle), and `<key>.reducer.pkl` holds the pickled reducer. A view reads only the npz; the
reducer is unpickled (which imports umap, numba and pynndescent: seconds) the first time a query is placed
on the map. A small in-process layer in front of the disk saves even the npz read on Streamlit's reruns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import threading
import zipfile
from collections import OrderedDict
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InvalidInput, ReducerMissing, TooFewReferences
from .files import atomic_file
from .projection import (
    FIT_REVISION, DeferredReducer, Progress, Projection, ProjectionParams, notify, project,
)

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the cached files' shape changes, so old files are simply not found (2: npz + reducer)
MAX_CACHE_FILES = 24  # maps (npz + reducer file each) kept on disk; the least recently used are deleted after a save
MEMORY_ENTRIES = 4


def fingerprint(embedding_model: str, ids: Sequence[int], vectors: np.ndarray, params: ProjectionParams) -> str:
    """A hex digest that changes when the model, the reference set, any vector, the parameters or the
    fitting libraries change.

    The vectors themselves are hashed (about 0.1 s for 20k x 512) rather than, say, the newest
    created_at: re-embedding references with new weights under the same model id changes vectors
    without adding rows, and labels are deliberately left out because they do not move any point
    (the page joins the current labels onto the cached coordinates).
    """
    header = {
        "format": CACHE_FORMAT, "embedding_model": embedding_model, "params": params.key(), "n": len(ids),
        "fit": FIT_REVISION, "versions": {pkg: installed_version(pkg) for pkg in ("umap-learn", "scikit-learn", "numpy")},
        "data": vectors_digest(ids, vectors),
    }
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def vectors_digest(ids: Sequence[int], vectors: np.ndarray) -> str:
    """sha256 of the ids and the float32 vectors, in the order given."""
    digest = hashlib.sha256()
    digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


def installed_version(package: str) -> str:
    """An installed distribution's version, or "absent": part of the keys of caches that a library's
    upgrade makes stale (maps here, numba's compiled code in numba_warmup)."""
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
_UNREADABLE = (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError, InvalidInput,
               KeyError, IndexError, zipfile.BadZipFile)


class _ReducerFile(DeferredReducer):
    """The reducer of a map loaded from the disk cache: unpickled on first use, then kept.

    Every copy of the Projection (the memory layer's, and each call's copy that says where it came from)
    shares one instance, so the file is read at most once per process. The files are written only by this module under the
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
        try:  # unpickling a UMAP imports umap, and with it numba
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
    reducer = projection.fitted_reducer()
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


def in_id_order(ids: Sequence[int], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ids ascending, contiguous float32 vectors in that order): a map does not depend on the order
    the rows came in."""
    ids_arr = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids_arr, kind="stable")
    return ids_arr[order], np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[order])


def lookup(cache_dir: Path | str, key: str) -> Projection | None:
    """The map of fingerprint `key` from memory or from `cache_dir` (a copy saying which), or None."""
    if (found := _recall(key)) is not None:
        return dataclasses.replace(found, source="memory")
    if (found := _load(Path(cache_dir), key)) is not None:
        _remember(found)
        return dataclasses.replace(found, source="disk")
    return None


def fit_and_save(cache_dir: Path | str, key: str, ids: np.ndarray, x: np.ndarray, params: ProjectionParams,
                 progress: Progress | None = None) -> Projection:
    """Fit the map of fingerprint `key` (ids ascending, x in their order), save it and keep it in memory."""
    notify(progress, 0.0, f"Computing a {params.method.upper()} map of {len(ids)} references…")
    fitted = project(x, **asdict(params), ids=ids, progress=progress)
    fitted.fingerprint = key
    notify(progress, 0.95, "Saving the map for next time…")
    _save(Path(cache_dir), fitted)
    _remember(fitted)
    notify(progress, 1.0, f"Map computed in {fitted.seconds:.1f} s.")
    return fitted


def cached_projection(
    cache_dir: Path | str,
    embedding_model: str,
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
    was taken. The fit runs in the caller's thread; `projection_jobs` runs it in the background.
    """
    if rows is not None:
        ids = [r["id"] for r in rows]
        vectors = np.stack([r["embedding"] for r in rows]) if rows else np.empty((0, 0))
    if ids is None or vectors is None:
        raise InvalidInput("cached_projection needs rows, or ids and vectors.")
    if len(ids) == 0:
        raise TooFewReferences(f"There are no reference vectors of {embedding_model} to project.")
    ids_arr, x = in_id_order(ids, vectors)
    key = fingerprint(embedding_model, ids_arr, x, params)

    # Each call gets its own shallow copy saying where the map came from; copies share the coordinates and
    # the reducer (a deferred one stays unloaded). Memory first, the common case, without the fit lock;
    # under it, lookup looks again (a thread that held it may have just fitted the map).
    if (found := _recall(key)) is not None:
        return dataclasses.replace(found, source="memory")
    with _fit_lock(key):
        # Fitted by another thread while we waited, or saved by an earlier process.
        if (found := lookup(cache_dir, key)) is not None:
            return found
        return fit_and_save(cache_dir, key, ids_arr, x, params, progress)
