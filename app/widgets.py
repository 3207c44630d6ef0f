"""Shared UI pieces: the sidebar status, the model-state warning, the missing-vectors notice, error display,
and the escaping that keeps user text (labels, file names) text."""

from __future__ import annotations

import html
import re

import streamlit as st

from raiox_dashboard.resources import (
    cached_stats, clear_query_caches, get_db, get_model_state, get_settings, get_storage, restart_embedded_database,
)
from raiox_core.errors import RaioxError
from raiox_core.model_state import UNAVAILABLE, UNTRAINED

DISCLAIMER = "Decision support, not a diagnosis: confirm every identification clinically."


def untrained_warning() -> None:
    """Shown on every page while the weights are untrained (matches are then not meaningful), with the reason."""
    state = get_model_state()
    if state.status == UNTRAINED:
        st.warning(md_escape(state.message), icon=":material/warning:")


def _database_status(embedded: bool) -> bool:
    kind = "embedded" if embedded else "external"
    try:
        db = get_db()
        try:
            db.ping()  # a live check: the cached counts below may be up to a minute old
        except RaioxError:
            if not embedded:
                raise
            db = restart_embedded_database()  # ours to run: started again, as the next command would
            db.ping()
        stats = cached_stats()
    except RaioxError as exc:
        st.error(f"Database ({kind}) unreachable: {md_escape(exc)}")
        return False
    st.markdown(f"**Database** ({kind}): reachable")
    st.caption(md_escape(db.description))
    st.metric("References", stats["references"])
    return True


def _model_status() -> None:
    state = get_model_state()
    if state.status == UNAVAILABLE:
        st.error(f"**Model unavailable**: {md_escape(' '.join(p for p in (state.reason, state.fix) if p))}",
                 icon=":material/error:")
    elif state.status == UNTRAINED:
        st.markdown("**Model**: untrained")
    else:
        st.markdown("**Model**: loaded")
    st.caption(md_escape(state.embedding_model))


def sidebar() -> bool:
    """Database, storage, reference count, the model's state, and the disclaimer, on every page.

    Returns whether the database answered: every page needs it, and a query to a server that stopped
    answering would wait without end."""
    settings = get_settings()
    with st.sidebar:
        reachable = _database_status(settings.embedded_database)
        try:
            st.caption(f"Storage: {md_escape(get_storage().description)}")
        except RaioxError as exc:
            show_error(exc)
        _model_status()
        untrained_warning()
        st.caption(DISCLAIMER)
    return reachable


def missing_vectors_notice(key: str) -> None:
    """Say plainly when references lack the active model's vectors, with the command and a staff button for it."""
    from raiox_dashboard.auth import require_staff  # auth needs the resources module that this one imports first

    state = get_model_state()
    try:
        stats = cached_stats()
    except RaioxError:
        return  # the sidebar says the database is unreachable
    missing = stats["references"] - stats["embedding_models"].get(state.embedding_model, 0)
    if missing <= 0:
        return
    if not state.usable:  # nothing can be computed, and `raiox reembed` would fail the same way
        st.error(f"The image model could not be loaded, so the {stats['references']} references cannot be matched "
                 f"or mapped: {md_escape(state.reason)}", icon=":material/error:")
        return
    st.warning(
        f"{missing} of {stats['references']} references have no vectors for the active model "
        f"{md_escape(state.embedding_model)}, so they cannot be matched or mapped until these are computed: run "
        "`raiox reembed` with the same settings, or compute them here (staff).", icon=":material/info:")
    with st.expander("Compute the missing vectors (staff)"):
        if require_staff(f"{key}_reembed") and st.button(f"Compute {missing} vectors", key=f"{key}_reembed_go"):
            _reembed(state.embedder)


def _reembed(embedder) -> None:
    from raiox_core.references import reembed

    bar = st.progress(0.0, text="Computing vectors…")
    try:
        added = reembed(get_db(), get_storage(), embedder,
                        progress=lambda done, total: bar.progress(done / total, text=f"{done} of {total} references"))
    except RaioxError as exc:
        show_error(exc)
        return
    clear_query_caches()
    st.toast(f"{added} references embedded with {embedder.embedding_model}.")
    st.rerun()


def show_error(exc: RaioxError) -> None:
    """A user's mistake or an unavailable service: one sentence, no traceback; quoted names stay text."""
    st.error(md_escape(exc))


def session_memo(name: str, key, compute):
    """`compute()` once per `key` in this browser session; reruns (clicks, other widgets) reuse the value.

    Session-scoped on purpose: an uploaded X-ray and what is derived from it stay with the session
    that sent it, never in a process-wide cache. Exceptions are not stored, so a refusal shows again.
    """
    slot = st.session_state.get(name)
    if slot is None or slot[0] != key:
        slot = (key, compute())
        st.session_state[name] = slot
    return slot[1]


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&])")


# Streamlit's Markdown turns bare URLs, "www." names, e-mail addresses and :shortcodes: into links or emoji
# by searching the text after escapes are resolved, so a backslash cannot stop it; an invisible word
# joiner (U+2060) after each ':', after "www" and before each '@' breaks those patterns and shows nothing.
_AUTOLINK_BREAK = re.compile(r"(?<=:)|(?<=www)(?=\.)|(?=@)", re.IGNORECASE)
WORD_JOINER = "\u2060"


def md_escape(text: object) -> str:
    """User data (labels, file names) made inert for st.markdown/st.caption: shown as typed, never as markup."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _AUTOLINK_BREAK.sub(WORD_JOINER, str(text)))


def plot_text(text: object) -> str:
    """User data made inert for plotly, which renders a little HTML (<a href>, <b>, <br>) in labels and legends."""
    return html.escape(str(text), quote=False)


def pager(num_pages: int, key: str) -> int:
    """The current page (1-based): st.pagination where this Streamlit has it, else a number input."""
    num_pages = max(1, int(num_pages))
    if hasattr(st, "pagination"):
        return int(st.pagination(num_pages, key=key))
    return int(st.number_input(f"Page (of {num_pages})", min_value=1, max_value=num_pages, step=1, key=key))
