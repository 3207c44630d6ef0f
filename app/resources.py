"""Process-wide resources, created once with st.cache_resource, and cached queries with st.cache_data."""

from __future__ import annotations

import time

import streamlit as st

from raiox_core.config import Settings
from raiox_core.db import Database, open_database
from raiox_core.embedder import Embedder
from raiox_core.errors import RaioxError
from raiox_core.images import ImageLimits
from raiox_core.model_state import ModelState, load_model_state
from raiox_core.storage import Storage, open_storage


@st.cache_resource
def get_settings() -> Settings:
    """Settings from the environment; the staff password may also come from .streamlit/secrets.toml."""
    settings = Settings.from_env()
    if settings.staff_password is None:
        try:
            secret = st.secrets.get("RAIOX_STAFF_PASSWORD")
        except FileNotFoundError:  # no secrets.toml: that is fine
            secret = None
        if secret:
            settings = settings.with_(staff_password=str(secret))
    return settings


# Exceptions are not cached, so an unreachable database is retried on the next rerun: the app
# recovers when it comes back without a restart.
@st.cache_resource(show_spinner="Starting the database…")
def get_db() -> Database:
    return open_database(get_settings())


def restart_embedded_database() -> Database:
    """The embedded PostgreSQL is Raiox's own: when it has stopped under the dashboard (killed, or stopped by
    hand), a new handle starts it again, as any command would. Raises DatabaseUnavailable if it cannot."""
    stale = get_db()
    get_db.clear()
    stale.close()
    return get_db()


@st.cache_resource(show_spinner=False)
def get_storage() -> Storage:
    return open_storage(get_settings())


class _Unavailable(Exception):
    """Carries an unavailable ModelState out of the cached loader: exceptions are not cached, so it is retried."""

    def __init__(self, state: ModelState):
        super().__init__(state.reason)
        self.state = state


@st.cache_resource(show_spinner="Loading the image model (once per server)…", max_entries=4)
def _usable_model_state(model: str, pretrained: str, device: str, precision: str, fallback: bool) -> ModelState:
    """One loaded model per configuration (the arguments are the cache key: a changed setting loads anew)."""
    state = load_model_state(get_settings())
    if not state.usable:
        raise _Unavailable(state)
    return state


UNAVAILABLE_RETRY_S = 30.0  # weights that could not be loaded are looked for again after this long, not on every rerun
_last_failure: dict[tuple, tuple[float, ModelState]] = {}


def get_model_state() -> ModelState:
    """The active model's state, loaded once per server; shown in the sidebar from every page's first render."""
    settings = get_settings()
    key = (settings.model, settings.pretrained, settings.device, settings.precision, settings.untrained_fallback)
    failed = _last_failure.get(key)
    if failed and time.monotonic() - failed[0] < UNAVAILABLE_RETRY_S:
        return failed[1]
    try:
        state = _usable_model_state(*key)
    except _Unavailable as exc:
        _last_failure[key] = (time.monotonic(), exc.state)
        return exc.state
    _last_failure.pop(key, None)
    return _adapted(state)


@st.cache_data(ttl=30, show_spinner=False)
def _active_adapter(base_model: str) -> str | None:
    """The adapter in force for a base model, looked up at most every 30 s: `raiox train` applies without a restart."""
    from raiox_core.adapter import active_id

    return active_id(get_db(), base_model, get_settings())


@st.cache_resource(show_spinner=False, max_entries=4)
def _adapted_state(base_model: str, adapter_id: str, _state: ModelState) -> ModelState:
    from raiox_core.adapter import with_active_adapter

    return with_active_adapter(_state, get_db(), get_settings())


def _adapted(state: ModelState) -> ModelState:
    """The state with the active adapter of its model (raiox_core.adapter); the base model when there is none,
    when RAIOX_ADAPTER=off, or while the database cannot be asked."""
    if not state.usable or get_settings().adapter == "off":
        return state
    try:
        adapter_id = _active_adapter(state.embedding_model)
    except RaioxError:
        return state
    return state if adapter_id is None else _adapted_state(state.embedding_model, adapter_id, state)


def get_embedder() -> Embedder:
    """The loaded model; ModelLoadError (reason and fix) when it is unavailable."""
    return get_model_state().require()


def active_embedding_model() -> str:
    """The model id whose vectors the pages show and search (the untrained one after a demo's fallback)."""
    return get_model_state().embedding_model


def get_limits() -> ImageLimits:
    return ImageLimits.from_settings(get_settings())


@st.cache_data(ttl=60, show_spinner=False)
def cached_stats() -> dict:
    return get_db().stats()


def clear_query_caches() -> None:
    """After ingestion, edits and deletions: every page shows the new state at once."""
    st.cache_data.clear()


# -- references page: cached list, count, thumbnails and neighbours (cleared by clear_query_caches) ---


@st.cache_data(ttl=60, show_spinner=False, max_entries=256)
def cached_reference_list(manufacturer: str | None, model: str | None, diameter_min: float | None,
                          diameter_max: float | None, text: str | None, limit: int, offset: int):
    """One page of references matching the filters (plain arguments, so Streamlit can hash them)."""
    from raiox_core.db import Filters
    from raiox_core.references import listing

    return listing(get_db(), Filters(manufacturer, model, diameter_min, diameter_max, text), limit=limit, offset=offset)


@st.cache_data(ttl=60, show_spinner=False, max_entries=256)
def cached_reference_count(manufacturer: str | None, model: str | None, diameter_min: float | None,
                           diameter_max: float | None, text: str | None) -> int:
    from raiox_core.db import Filters

    return get_db().count(Filters(manufacturer, model, diameter_min, diameter_max, text))


@st.cache_data(show_spinner=False, max_entries=2048)
def cached_thumbnail(object_key: str, side: int = 160) -> bytes:
    """A small PNG of a stored image; keys are content hashes, so a key's thumbnail never goes stale."""
    from raiox_core.images import thumbnail_png

    return thumbnail_png(get_storage().get(object_key), get_limits(), side)


@st.cache_data(ttl=60, show_spinner=False, max_entries=256)
def cached_neighbours(reference_id: int, embedding_model: str, k: int = 6):
    """references.neighbours of one reference, shared by every session for a minute."""
    from raiox_core.references import neighbours

    return neighbours(get_db(), reference_id, embedding_model, k)


@st.cache_data(ttl=60, show_spinner="Loading the reference vectors…", max_entries=2)
def cached_embeddings(embedding_model: str):
    """(labels DataFrame without the vectors, (n, dim) float32 matrix in the same row order) of one model.

    One contiguous matrix instead of a list of dicts holding arrays: st.cache_data copies its value on
    every rerun, and copying one array is cheap. Used by the explorer.
    """
    import numpy as np
    import pandas as pd

    rows = get_db().embeddings(embedding_model)
    columns = ["id", "manufacturer", "model", "diameter_mm", "source_filename", "object_key", "source"]
    labels = pd.DataFrame([{c: r[c] for c in columns} for r in rows], columns=columns)
    vectors = np.stack([r["embedding"] for r in rows]) if rows else np.empty((0, 0), np.float32)
    return labels, vectors
