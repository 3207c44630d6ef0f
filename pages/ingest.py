"""Ingest (staff): upload images or zip archives, check and correct their labels, then add them.

Each uploaded image is decoded and hashed once per upload (kept in this session only); labels and
duplicates are re-judged on every rerun by the core's Planner (the rule ingestion itself applies), so the
validation always reflects the latest edits and database.

The label editor is given the same data on every rerun: Streamlit resets an editor whose data changes,
which would throw away each edit as it is typed. The edits live in the editor's own state until the uploads
change; then they are kept by file (keep_edits) and the new editor starts from them. The verdicts are
shown in a separate, read-only table.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pandas as pd
import streamlit as st

from raiox_dashboard.auth import require_staff, sign_out_button
from raiox_dashboard.resources import clear_query_caches, get_db, get_embedder, get_limits, get_settings, get_storage
from raiox_dashboard.widgets import show_error
from raiox_core.errors import NamingError, RaioxError
from raiox_core.images import ImageLimits
from raiox_core.ingest import (
    FileReport,
    LabelOverride,
    Source,
    Verdict,
    check_image,
    ingest,
    plan,
    report_dicts,
    sources_from_upload,
)
from raiox_core.naming import MAX_DIAMETER_MM, MIN_DIAMETER_MM, parse_filename

CHECKS = "ingest_checks"  # session key: {(upload file_id, source name): (sha256 | None, refusal | None)}
REPORT = "ingest_report"  # session key: the last ingestion's per-file results
ROUND = "ingest_round"  # session key: bumped after an ingestion so the uploader starts empty
LABEL_COLUMNS = ["manufacturer", "model", "diameter_mm"]
EDITS = "ingest_edits"  # session key: {(upload file_id, source name): {column: value}}, the corrections so far
SHOWN = "ingest_shown"  # session key: (editor key, the row keys it showed), to keep its edits when it is replaced
COLUMN_PX = {"file": 280, "manufacturer": 180, "model": 150, "diameter_mm": 130}  # fixed widths: the table
# does not jump about as values are typed (and a browser test knows where each cell is)
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
            image = check_image(source, limits)
            previous[key] = (None, image) if isinstance(image, str) else (image.sha256, None)
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


def keep_edits(editor_key: str) -> dict:
    """The corrections typed so far, by file; when the uploads change, the replaced table's go with their files.

    The table's data must stay the same while it is shown (a changed one resets the grid and loses what was
    typed), so edits are folded in only here, when a new table replaces the old one.
    """
    edits = st.session_state.setdefault(EDITS, {})
    shown = st.session_state.get(SHOWN)
    if shown and shown[0] != editor_key:
        state = st.session_state.get(shown[0])  # still there in the run after the table was last drawn
        for row, changes in (state or {}).get("edited_rows", {}).items():
            if 0 <= int(row) < len(shown[1]):
                edits.setdefault(shown[1][int(row)], {}).update(
                    {column: value for column, value in changes.items() if column in LABEL_COLUMNS})
    return edits


def override(row) -> LabelOverride:
    """The table row as explicit labels; blank cells fall back to the file name."""
    diameter = row["diameter_mm"]
    return LabelOverride(
        manufacturer=str(row["manufacturer"] or "").strip() or None,
        model=str(row["model"] or "").strip() or None,
        diameter_mm=None if diameter is None or pd.isna(diameter) else float(diameter),
    )


def describe(verdict: Verdict) -> str:
    """'ok', 'duplicate of #id' / 'duplicate of <file>', or 'rejected: reason'."""
    if verdict.status == "rejected":
        return f"rejected: {verdict.reason}"
    if verdict.status == "duplicate":
        return f"duplicate of #{verdict.duplicate_id}" if verdict.duplicate_id is not None else f"duplicate of {verdict.duplicate_of}"
    return "ok"


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


def run_ingest(sources: list[Source], refused: list[FileReport]) -> None:
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
    for name in (CHECKS, EDITS, SHOWN):
        st.session_state.pop(name, None)
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
row_keys = [(file_id, source.name) for file_id, source in pairs]
edits = keep_edits(editor_key)
labels = pd.DataFrame([{"file": s.name, **parsed_labels(s), **edits.get(key, {})} for s, key in zip(sources, row_keys)],
                      columns=["file", *LABEL_COLUMNS])
st.session_state[SHOWN] = (editor_key, row_keys)
labels["diameter_mm"] = pd.to_numeric(labels["diameter_mm"], errors="coerce")
if sources:
    st.caption("Labels (double-click a cell to correct it; a blank cell takes the value from the file name)")
    labels = st.data_editor(
        labels,
        key=editor_key,
        hide_index=True,
        num_rows="fixed",
        width="content",
        disabled=["file"],
        column_config={
            "file": st.column_config.TextColumn("File", width=COLUMN_PX["file"]),
            "manufacturer": st.column_config.TextColumn("Manufacturer", max_chars=100, width=COLUMN_PX["manufacturer"]),
            "model": st.column_config.TextColumn("Model", max_chars=100, width=COLUMN_PX["model"]),
            # Steps of 0.01, as stored: a step of 0.1 rounds what the table shows (3.75 as 3.70). No
            # printf format: "%g" is not one the grid knows, and it blanks the cells.
            "diameter_mm": st.column_config.NumberColumn("Diameter (mm)", min_value=MIN_DIAMETER_MM,
                                                         max_value=MAX_DIAMETER_MM, step=0.01,
                                                         width=COLUMN_PX["diameter_mm"]),
        },
    )
for source, (_, row) in zip(sources, labels.iterrows()):
    source.labels = override(row)  # the staff's corrections win over the file name
verdicts = plan(sources, checks, known)
st.dataframe(
    pd.DataFrame({"file": [s.name for s in sources] + [r.file for r in refused],
                  "status": [describe(v) for v in verdicts] + [f"rejected: {r.reason}" for r in refused]}),
    hide_index=True,
    column_config={"file": st.column_config.TextColumn("File"), "status": st.column_config.TextColumn("Validation")},
)
counts = Counter(v.status for v in verdicts) + Counter(rejected=len(refused))
ready = counts["ok"]
st.caption(f"{ready} ready, {counts['duplicate']} duplicates, {counts['rejected']} rejected.")
if st.button(f"Ingest {ready} file{'s' if ready != 1 else ''}", type="primary", disabled=ready == 0, key="ingest_go"):
    run_ingest(sources, refused)
