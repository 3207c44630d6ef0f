"""Ingest (staff): upload images or zip archives, check and correct their labels, then add them.

Each uploaded image is decoded and hashed once per upload (kept in this session only); labels and
duplicates are re-checked on every rerun, so the table always reflects the latest edits and database.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pandas as pd
import streamlit as st

from app.auth import require_staff, sign_out_button
from app.resources import clear_query_caches, get_db, get_embedder, get_limits, get_settings, get_storage
from app.widgets import show_error
from raiox_core.errors import ImageRejected, NamingError, RaioxError
from raiox_core.images import ImageLimits, prepare_image
from raiox_core.ingest import FileReport, LabelOverride, Source, ingest, report_dicts, sources_from_upload
from raiox_core.naming import MAX_DIAMETER_MM, MIN_DIAMETER_MM, parse_filename

CHECKS = "ingest_checks"  # session key: {(upload file_id, source name): (sha256 | None, refusal | None)}
REPORT = "ingest_report"  # session key: the last ingestion's per-file results
ROUND = "ingest_round"  # session key: bumped after an ingestion so the uploader starts empty
LABEL_COLUMNS = ["manufacturer", "model", "diameter_mm"]
STAGES = {"reading": "Reading", "embedding": "Embedding", "storing": "Storing and inserting", "done": "Done"}


def expand(uploads) -> tuple[list[tuple[str, Source]], list[FileReport]]:
    """Uploaded files -> (upload id, source) pairs, zips expanded; unreadable archives and unsafe entries refused."""
    pairs, refused = [], []
    for upload in uploads:
        found, bad = sources_from_upload(upload.name, upload.getvalue())
        pairs += [(upload.file_id, s) for s in found]
        refused += bad
    return pairs, refused


def inspect(pairs: list[tuple[str, Source]], limits: ImageLimits) -> list[tuple[str | None, str | None]]:
    """(sha256, None) or (None, reason) per source; decoded once per upload, then reused from the session."""
    previous = st.session_state.get(CHECKS, {})
    checks = {}
    for file_id, source in pairs:
        key = (file_id, source.name)
        if key not in previous:
            try:
                previous[key] = (prepare_image(source.read(limits.max_bytes), limits).sha256, None)
            except ImageRejected as exc:
                previous[key] = (None, str(exc))
            except OSError as exc:
                previous[key] = (None, f"The file could not be read ({exc.strerror or type(exc).__name__}).")
        checks[key] = previous[key]
    st.session_state[CHECKS] = checks  # only the current uploads: removed files are forgotten
    return [checks[(file_id, source.name)] for file_id, source in pairs]


def parsed_labels(source: Source) -> dict:
    """Labels read from the file name, blank when it does not follow the convention."""
    try:
        labels = parse_filename(source.filename)
    except NamingError:
        return {"manufacturer": "", "model": "", "diameter_mm": None}
    return {"manufacturer": labels.manufacturer, "model": labels.model, "diameter_mm": labels.diameter_mm}


def apply_pending_edits(table: pd.DataFrame, editor_key: str) -> pd.DataFrame:
    """The editor's edits from the last interaction, applied now, so validation sees them in this run."""
    state = st.session_state.get(editor_key)
    edited = state.get("edited_rows", {}) if isinstance(state, dict) else {}
    table = table.copy()
    for row, changes in edited.items():
        for column, value in changes.items():
            if column in LABEL_COLUMNS and 0 <= int(row) < len(table):
                table.at[int(row), column] = value
    return table


def override(row) -> LabelOverride:
    """The table row as explicit labels; blank cells fall back to the file name."""
    diameter = row["diameter_mm"]
    return LabelOverride(
        manufacturer=str(row["manufacturer"] or "").strip() or None,
        model=str(row["model"] or "").strip() or None,
        diameter_mm=None if diameter is None or pd.isna(diameter) else float(diameter),
    )


def validate(sources: list[Source], table: pd.DataFrame, checks: list, known: dict[str, int]) -> list[str]:
    """'ok', 'duplicate of #id' / 'duplicate of <file>', or 'rejected: reason', one per source row."""
    statuses, seen = [], {}
    for source, (_, row), (sha, refusal) in zip(sources, table.iterrows(), checks):
        if refusal:
            statuses.append(f"rejected: {refusal}")
            continue
        try:
            override(row).resolve(source.filename)
        except NamingError as exc:
            statuses.append(f"rejected: {exc}")
            continue
        if sha in known:
            statuses.append(f"duplicate of #{known[sha]}")
        elif sha in seen:
            statuses.append(f"duplicate of {seen[sha]}")
        else:
            seen[sha] = source.name
            statuses.append("ok")
    return statuses


def show_report(items: list[dict]) -> None:
    counts = Counter(item["status"] for item in items)
    st.subheader("Last ingestion")
    c1, c2, c3 = st.columns(3)
    c1.metric("Ingested", counts["ingested"])
    c2.metric("Duplicates", counts["duplicate"])
    c3.metric("Rejected", counts["rejected"])
    columns = ["file", "status", "id", "manufacturer", "model", "diameter_mm", "reason"]
    table = pd.DataFrame(items, columns=columns)
    table["id"] = table["id"].astype("Int64")  # blank, not NaN, for rejected files
    st.dataframe(table, hide_index=True)
    if st.button("Dismiss report", key="ingest_dismiss"):
        st.session_state.pop(REPORT, None)
        st.rerun()


def run_ingest(sources: list[Source], table: pd.DataFrame, refused: list[FileReport]) -> None:
    for source, (_, row) in zip(sources, table.iterrows()):
        source.labels = override(row)  # the staff's corrections win over the file name
    bar = st.progress(0.0, text="Starting…")

    def progress(done: int, total: int, stage: str) -> None:
        bar.progress(done / total if total else 1.0, text=f"{STAGES.get(stage, stage)}: {done} of {total} files")

    try:
        report = ingest(sources, db=get_db(), storage=get_storage(), embedder=get_embedder(), limits=get_limits(),
                        source="upload", progress=progress)
    except RaioxError as exc:  # database, storage or model unavailable: nothing half-done is left behind
        show_error(exc)
        return
    report.items = refused + report.items
    clear_query_caches()  # the new references show at once on every page
    st.session_state[REPORT] = report_dicts(report)
    st.session_state[ROUND] = st.session_state.get(ROUND, 0) + 1
    st.session_state.pop(CHECKS, None)
    st.rerun()


st.title("Ingest reference images")
if not require_staff("ingest"):
    st.stop()
sign_out_button("ingest")
if REPORT in st.session_state:
    show_report(st.session_state[REPORT])

settings = get_settings()
uploads = st.file_uploader(
    "Images or .zip archives",
    accept_multiple_files=True,
    key=f"ingest_upload_{st.session_state.get(ROUND, 0)}",
    help=f"JPEG, PNG, TIFF, BMP, GIF, WebP or DICOM, up to {settings.max_upload_mb:g} MB per file. "
         "Names like NOBEL_REPLACE_4.3mm_01.png give the labels; correct them in the table.",
)
if not uploads:
    st.caption("Upload reference images to check their labels before adding them.")
    st.stop()

pairs, refused = expand(uploads)
sources = [source for _, source in pairs]
checks = inspect(pairs, get_limits())
try:
    known = get_db().existing([sha for sha, _ in checks if sha])
except RaioxError as exc:
    show_error(exc)
    st.stop()

fingerprint = hashlib.sha256("\n".join(u.file_id for u in uploads).encode()).hexdigest()[:12]
editor_key = f"ingest_labels_{fingerprint}"  # new uploads, new table: edits never land on the wrong row
table = apply_pending_edits(pd.DataFrame([parsed_labels(s) for s in sources], columns=LABEL_COLUMNS), editor_key)
statuses = validate(sources, table, checks, known)
shown = pd.DataFrame({
    "file": [s.name for s in sources] + [r.file for r in refused],
    "manufacturer": list(table["manufacturer"]) + [""] * len(refused),
    "model": list(table["model"]) + [""] * len(refused),
    "diameter_mm": list(table["diameter_mm"]) + [None] * len(refused),
    "status": statuses + [f"rejected: {r.reason}" for r in refused],
})
shown["diameter_mm"] = pd.to_numeric(shown["diameter_mm"], errors="coerce")
st.data_editor(
    shown,
    key=editor_key,
    hide_index=True,
    num_rows="fixed",
    disabled=["file", "status"],
    column_config={
        "file": st.column_config.TextColumn("File"),
        "manufacturer": st.column_config.TextColumn("Manufacturer", max_chars=100),
        "model": st.column_config.TextColumn("Model", max_chars=100),
        "diameter_mm": st.column_config.NumberColumn("Diameter (mm)", min_value=MIN_DIAMETER_MM,
                                                     max_value=MAX_DIAMETER_MM, step=0.1, format="%.2f"),
        "status": st.column_config.TextColumn("Validation"),
    },
)
ready = statuses.count("ok")
counts = Counter(s.split(" ")[0].rstrip(":") for s in statuses + ["rejected"] * len(refused))
st.caption(f"{ready} ready, {counts['duplicate']} duplicates, {counts['rejected']} rejected.")
if st.button(f"Ingest {ready} file{'s' if ready != 1 else ''}", type="primary", disabled=ready == 0, key="ingest_go"):
    run_ingest(sources, table, refused)
