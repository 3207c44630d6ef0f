"""The latest web-form (Jotform) submissions and their answers, for staff on the /match page."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import streamlit as st

from raiox_core import submissions
from raiox_core.errors import RaioxError

from .resources import get_db
from .widgets import show_error

SHOWN = 20


def _answer(record: submissions.SubmissionRecord) -> str:
    if record.status != submissions.DONE:
        return record.error or "being matched…"
    return "; ".join(f"{r['file']}: {r['answer']}" if "answer" in r else f"{r['file']}: refused ({r['error']})"
                     for r in record.results or [])


def _top_match(record: submissions.SubmissionRecord) -> tuple[str | None, float | None]:
    for result in record.results or []:
        if result.get("matches"):
            top = result["matches"][0]
            return f"#{top['id']} {top['manufacturer']} {top['model']} {top['diameter_mm']:g} mm", top["similarity"]
    return None, None


def recent_submissions() -> None:
    """A table of the latest submissions (newest first); strings shown as data, never as Markdown."""
    try:
        records = submissions.latest(get_db(), SHOWN)
    except RaioxError as exc:
        show_error(exc)
        return
    counts = Counter(r.status for r in records)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none yet"
    with st.expander(f"Form submissions (latest {SHOWN}: {summary})", icon=":material/inbox:"):
        if not records:
            st.caption("No web-form submission has arrived. The README's HTTP API section says how to point a "
                       "Jotform form's webhook at `raiox api`.")
            return
        rows = []
        for r in records:
            top, similarity = _top_match(r)
            rows.append({"received": r.received_at, "form": r.form_id, "submission": r.submission_id,
                         "status": r.status, "answer": _answer(r), "top match": top, "similarity": similarity,
                         "result posted": "yes" if r.delivered_at else (r.delivery_error or "")})
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                     column_config={"similarity": st.column_config.NumberColumn(format="%.3f"),
                                    "received": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
