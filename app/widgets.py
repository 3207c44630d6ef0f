"""Shared UI pieces: the sidebar status, the untrained-weights warning, error display."""

from __future__ import annotations

import streamlit as st

from app.resources import cached_stats, get_db, get_settings, get_storage
from raiox_core.embedder import UNTRAINED, model_id_for
from raiox_core.errors import RaioxError

DISCLAIMER = "Decision support, not a diagnosis: confirm every identification clinically."


def untrained_warning() -> None:
    """Shown on every page while the weights are untrained: matches are then not meaningful."""
    if get_settings().pretrained.lower() == UNTRAINED:
        st.warning(
            "**Untrained model weights** (RAIOX_PRETRAINED=none): similarities and matches are NOT meaningful. "
            "Set RAIOX_PRETRAINED to a pretrained tag or a checkpoint file for real use.",
            icon="⚠️",
        )


def sidebar() -> None:
    """Database, storage, reference count, model id, and the disclaimer, on every page."""
    settings = get_settings()
    with st.sidebar:
        kind = "embedded" if settings.embedded_database else "external"
        try:
            description = get_db().description
            stats = cached_stats()
            st.markdown(f"**Database** ({kind}): reachable")
            st.caption(description)
            st.metric("References", stats["references"])
        except RaioxError as exc:
            st.error(f"Database ({kind}) unreachable: {exc}")
        try:
            st.caption(f"Storage: {get_storage().description}")
        except RaioxError as exc:
            st.error(str(exc))
        st.caption(f"Model: `{model_id_for(settings.model, settings.pretrained)}`")
        untrained_warning()
        st.caption(DISCLAIMER)


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


import re  # noqa: E402  (appended section: shared helpers are added at the end of this module)

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&])")


def md_escape(text: object) -> str:
    """User data (labels, file names) made inert for st.markdown/st.caption: shown as typed, never as markup."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def pager(num_pages: int, key: str) -> int:
    """The current page (1-based): st.pagination where this Streamlit has it, else a number input."""
    num_pages = max(1, int(num_pages))
    if hasattr(st, "pagination"):
        return int(st.pagination(num_pages, key=key))
    return int(st.number_input(f"Page (of {num_pages})", min_value=1, max_value=num_pages, step=1, key=key))
