"""References: a filterable thumbnail gallery, counts per label, one reference in detail with its nearest
neighbours; staff can correct labels and delete.

User data (labels, file names) is shown as plain text: st.text, st.dataframe, or markdown-escaped captions.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import streamlit as st

from raiox_dashboard.auth import require_staff, sign_out_button
from raiox_dashboard.resources import (
    active_embedding_model,
    cached_neighbours,
    cached_reference_count,
    cached_reference_list,
    cached_stats,
    cached_thumbnail,
    clear_query_caches,
    get_db,
    get_storage,
)
from raiox_dashboard.widgets import md_escape, pager, plot_text, show_error
from raiox_core import references
from raiox_core.references import Neighbour, Reference, delete_reference, relabel
from raiox_core.errors import ImageRejected, NotFound, RaioxError, StorageError
from raiox_core.naming import MAX_DIAMETER_MM, MIN_DIAMETER_MM

PAGE_SIZE = 24
COLUMNS = 6
NEIGHBOURS = 6
MAX_LABEL_CHARS = 100
ANY = "All"
FLASH = "ref_flash"  # session key: a message that survives the rerun after a change
RESET_FORM = "ref_reset_form"  # session key: the reference whose relabel form starts afresh after a save
MAX_ID = 2**63 - 1  # ids are PostgreSQL bigints


def _label(row: Reference | Neighbour) -> str:
    return f"{row.manufacturer} {row.model} {row.diameter_mm:g} mm"


def _selected() -> int | None:
    """The reference shown in detail lives in the URL, so /references?id=12 can be shared or linked to."""
    wanted = st.query_params.get("id", "").strip()
    if not wanted:
        return None
    # isdigit() alone admits '²' and other digits that int() refuses; ids are plain ASCII numbers.
    if wanted.isascii() and wanted.isdigit() and 0 < int(wanted) <= MAX_ID:
        return int(wanted)
    st.error(f"The address asks for reference {md_escape(wanted[:40])}, but a reference id is a positive whole number "
             "such as ?id=12.")
    return None


def _select(reference_id: int | None) -> None:
    if reference_id is None:
        st.query_params.pop("id", None)
    else:
        st.query_params["id"] = str(reference_id)


def _first_page() -> None:
    st.session_state.pop("ref_page", None)  # a filter changed: back to page 1


def _manufacturer_changed() -> None:
    st.session_state.pop("ref_model", None)  # the model list depends on the manufacturer
    _first_page()


def _thumbnail(object_key: str) -> None:
    try:
        st.image(cached_thumbnail(object_key))
    except (StorageError, ImageRejected):
        st.caption("image unavailable")


def filters_row(stats: dict) -> dict:
    """The filter widgets; returns the arguments of the cached list/count queries."""
    labels = stats["by_label"]
    manufacturers = sorted({m for m, _, _ in labels})
    text_col, man_col, model_col, dia_col = st.columns([2, 1.3, 1.3, 2])
    text = text_col.text_input("Search", key="ref_text", placeholder="manufacturer, model or file name",
                               on_change=_first_page)
    manufacturer = man_col.selectbox("Manufacturer", [ANY, *manufacturers], key="ref_manufacturer",
                                    on_change=_manufacturer_changed)
    models = sorted({mo for m, mo, _ in labels if manufacturer in (ANY, m)})
    model = model_col.selectbox("Model", [ANY, *models], key="ref_model", on_change=_first_page)
    low, high = dia_col.slider("Diameter (mm)", MIN_DIAMETER_MM, MAX_DIAMETER_MM, (MIN_DIAMETER_MM, MAX_DIAMETER_MM),
                               step=0.1, key="ref_diameter", on_change=_first_page)
    return {
        "manufacturer": None if manufacturer == ANY else manufacturer,
        "model": None if model in (ANY, None) else model,
        "diameter_min": None if low <= MIN_DIAMETER_MM else float(low),
        "diameter_max": None if high >= MAX_DIAMETER_MM else float(high),
        "text": text.strip() or None,
    }


def counts_chart(stats: dict) -> None:
    if not stats["by_label"]:
        return
    df = pd.DataFrame(stats["by_label"], columns=["manufacturer", "model", "count"])
    # Plotly renders a little HTML in labels (<b>, <a href>): escape it so a label is only ever text.
    df["manufacturer"] = df["manufacturer"].map(plot_text)
    df["label"] = df["manufacturer"] + " " + df["model"].map(plot_text)
    fig = px.bar(df, x="label", y="count", color="manufacturer", labels={"label": "Model", "count": "References"})
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), legend_title_text="Manufacturer")
    st.plotly_chart(fig, key="ref_counts_chart")


def gallery(query: dict, total: int) -> None:
    num_pages = max(1, math.ceil(total / PAGE_SIZE))
    page = pager(num_pages, key="ref_page") if num_pages > 1 else 1
    rows = cached_reference_list(**query, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    for start in range(0, len(rows), COLUMNS):
        for col, row in zip(st.columns(COLUMNS), rows[start : start + COLUMNS]):
            with col:
                _thumbnail(row.object_key)
                synthetic = " · synthetic" if row.source == "synthetic" else ""
                st.caption(f"\\#{row.id} {md_escape(_label(row))}{synthetic}")
                st.button("Details", key=f"ref_show_{row.id}", on_click=_select, args=(row.id,))


def neighbours(reference_id: int) -> None:
    embedding_model = active_embedding_model()
    st.markdown("**Nearest references** (cosine similarity of the stored vectors)")
    found = cached_neighbours(reference_id, embedding_model, NEIGHBOURS)
    if found is None:
        st.info(f"This reference has no vector for the model {embedding_model} yet: run `raiox reembed`.")
        return
    if not found:
        st.caption("No other references yet.")
        return
    for col, row in zip(st.columns(NEIGHBOURS), found):
        with col:
            _thumbnail(row.object_key)
            st.caption(f"\\#{row.id} {md_escape(_label(row))} · similarity {row.similarity:.3f}")
            st.button("Show", key=f"ref_neighbour_{row.id}", on_click=_select, args=(row.id,))


def staff_actions(row: Reference) -> None:
    st.markdown("**Edit or delete** (staff)")
    if not require_staff("references"):
        return
    sign_out_button("references")
    ref_id = row.id
    stored = {"manufacturer": row.manufacturer, "model": row.model, "diameter": float(row.diameter_mm)}
    reset = st.session_state.pop(RESET_FORM, None) == ref_id
    for field, value in stored.items():
        # Assigned, not popped: a browser keeps showing a widget's last value unless the server sets a new
        # one, so after a save the stored (canonicalised) labels replace what was typed.
        if reset or f"relabel_{ref_id}_{field}" not in st.session_state:
            st.session_state[f"relabel_{ref_id}_{field}"] = value
    with st.form(f"relabel_{ref_id}"):
        c1, c2, c3 = st.columns(3)
        manufacturer = c1.text_input("Manufacturer", max_chars=MAX_LABEL_CHARS, key=f"relabel_{ref_id}_manufacturer")
        model = c2.text_input("Model", max_chars=MAX_LABEL_CHARS, key=f"relabel_{ref_id}_model")
        diameter = c3.number_input("Diameter (mm)", min_value=MIN_DIAMETER_MM, max_value=MAX_DIAMETER_MM,
                                   step=0.1, format="%.2f", key=f"relabel_{ref_id}_diameter")
        if st.form_submit_button("Save labels"):
            try:
                relabel(get_db(), ref_id, manufacturer, model, diameter)
            except RaioxError as exc:
                show_error(exc)
            else:
                clear_query_caches()  # every page shows the new labels at once
                st.session_state[FLASH] = f"Reference #{ref_id} relabelled."
                st.session_state[RESET_FORM] = ref_id
                st.rerun()
    confirm = st.checkbox(f"Yes, delete reference #{ref_id} and its stored image for good", key=f"delete_confirm_{ref_id}")
    if st.button("Delete reference", key=f"delete_{ref_id}", type="primary", disabled=not confirm,
                 icon=":material/delete:"):
        try:
            delete_reference(get_db(), get_storage(), ref_id)
        except RaioxError as exc:
            show_error(exc)
        else:
            clear_query_caches()
            _select(None)
            st.session_state[FLASH] = f"Reference #{ref_id} deleted."
            st.rerun()


def detail(reference_id: int) -> None:
    try:
        row = references.get(get_db(), reference_id)
    except NotFound as exc:
        st.warning(str(exc))
        _select(None)
        return
    with st.container(border=True):
        head, close = st.columns([5, 1])
        head.subheader(f"Reference #{row.id}")
        close.button("Close", key="ref_close", on_click=_select, args=(None,))
        image_col, meta_col = st.columns([1, 1])
        with image_col:
            try:
                st.image(get_storage().get(row.object_key))
            except StorageError as exc:
                show_error(exc)
        with meta_col:
            if row.source == "synthetic":
                st.warning("Synthetic image: generated for demos and tests, not a real radiograph.", icon=":material/science:")
            st.text(_label(row))
            meta = {
                "Manufacturer": row.manufacturer,
                "Model": row.model,
                "Diameter": f"{row.diameter_mm:g} mm",
                "File name": row.source_filename,
                "Original size": f"{row.width} x {row.height} px",
                "Source": row.source,
                "Added": row.created_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip(),
            }
            st.dataframe(pd.DataFrame({"Field": list(meta), "Value": [str(v) for v in meta.values()]}),
                         hide_index=True)
            # Not a table cell, which cuts 64 hex digits off: a wrapped code block shows it whole, with a copy button.
            st.caption("SHA-256 of the normalised image")
            st.code(row.sha256, language=None, wrap_lines=True)
        neighbours(row.id)
        st.divider()
        staff_actions(row)


st.title("Reference implants")
if message := st.session_state.pop(FLASH, None):
    st.success(message)
try:
    stats = cached_stats()
except RaioxError as exc:
    show_error(exc)
    st.stop()

query = filters_row(stats)
total = cached_reference_count(**query)
st.caption(f"{total} of {stats['references']} references match.")
if (selected := _selected()) is not None:
    detail(selected)
with st.expander("Counts per manufacturer and model"):
    counts_chart(stats)
if total:
    gallery(query, total)
elif stats["references"]:
    st.info("No reference matches these filters.")
else:
    st.info("No references yet: staff can add some on the Ingest page, or run `raiox demo` for a synthetic set.")
