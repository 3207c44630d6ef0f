"""Match an X-ray: upload, straighten and crop, see the most similar labelled references, compare, give feedback."""

from __future__ import annotations

import io
import json

import pandas as pd
import plotly.express as px
import streamlit as st
from PIL import Image

from raiox_dashboard.auth import is_staff
from raiox_dashboard.explain_view import show_explanation
from raiox_dashboard.resources import cached_stats, get_db, get_limits, get_model_state, get_settings, get_storage
from raiox_dashboard.submissions import recent_submissions
from raiox_dashboard.widgets import DISCLAIMER, md_escape, missing_vectors_notice, plot_text, session_memo, show_error, untrained_warning
from raiox_core.compare import adjust, compare
from raiox_core.db import Filters
from raiox_core.errors import RaioxError
from raiox_core.explain import colour_range, overlay, similarity_map
from raiox_core.images import prepare_image, thumbnail_png
from raiox_core.match import match_image
from raiox_core.threshold import threshold_in_force

ANY = "Any"


# References are not patient data and their keys are content hashes, so a process-wide cache is safe.
@st.cache_data(max_entries=64, show_spinner=False)
def reference_png(object_key: str) -> bytes:
    return get_storage().get(object_key)


@st.cache_data(max_entries=1024, show_spinner=False)
def reference_thumbnail(object_key: str) -> bytes:
    return thumbnail_png(reference_png(object_key), side=200, limits=get_limits())


def vote_chart(shares, title: str, threshold: float | None = None):
    """Horizontal bars of the vote; the dashed threshold line's label sits above the plot, clear of the bars."""
    top = shares[:8]
    fig = px.bar(x=[s.probability for s in top], y=[plot_text(s.label) for s in top], orientation="h", title=title,
                 labels={"x": "share of the vote", "y": ""}, range_x=[0, 1])
    fig.update_layout(yaxis={"autorange": "reversed"}, height=150 + 32 * len(top), margin={"t": 70, "b": 10})
    fig.update_xaxes(tickformat=".0%")
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash")
        fig.add_annotation(x=threshold, y=1, yref="paper", yanchor="bottom", showarrow=False,
                           text=f"confidence threshold {threshold:.0%}")
    return fig


def show_answer(result) -> None:
    """The answer in words; green only when it is confident, with which vote the percentage is a share of."""
    if result.exact is not None:
        shown = any(m.id == result.exact.id for m in result.matches)
        where = ("It is the first reference below." if shown else
                 f"It is not among the references below: the search was restricted to {result.restricted_to}."
                 if result.restricted_to else "")
        st.success(md_escape(f"{result.summary} {where}".strip()), icon=":material/verified:")
    elif result.confident:
        st.success(md_escape(result.summary), icon=":material/check_circle:")
    else:
        st.warning(md_escape(result.summary), icon=":material/help:")
    if result.confidence_of == "model" and result.restricted_to:
        st.caption(f"Restricted to {md_escape(result.restricted_to)}: its share of the manufacturer vote is 100% "
                   "by construction, so the confidence is the leading model's share among its references.")


st.title("Match an X-ray")
st.caption("No patient data is asked for or kept: only a hash of the normalised image is logged, never the "
           f"file or its name. {DISCLAIMER}")
untrained_warning()
if is_staff():  # signed in on a staff page (ingest, references) in this session
    recent_submissions()
state = get_model_state()
if not state.usable:
    st.error(f"Matching is unavailable: the image model could not be loaded. {md_escape(state.reason)}",
             icon=":material/error:")
    st.stop()

try:
    stats = cached_stats()
except RaioxError as exc:
    show_error(exc)
    st.stop()
if not stats["references"]:
    st.info("There are no reference implants to compare with yet. Staff can add labelled X-rays on the "
            "**Ingest** page, or load the synthetic demo set with `raiox demo`.")
    st.stop()
missing_vectors_notice("match")

# type=None: a DICOM often has no extension, and the core reads the real format from the bytes anyway.
upload = st.file_uploader("X-ray of one implant", type=None, key="match_upload",
                          help="JPEG, PNG, TIFF, BMP, GIF, WebP or DICOM (with or without .dcm).")
if upload is None:
    # Removing the file forgets the X-ray and its result too: nothing of it outlives its use.
    for name in ("match_original", "match_result", "match_explain", "match_occlusion"):
        st.session_state.pop(name, None)
    st.stop()

try:
    # Decoded once per upload, before any control is drawn: a refused file shows its reason alone.
    original = session_memo("match_original", upload.file_id, lambda: prepare_image(upload.getvalue(), get_limits()))
except RaioxError as exc:
    show_error(exc)
    st.stop()

settings = get_settings()
controls, preview = st.columns(2)
with controls:
    quarter = st.radio("Rotate (clockwise)", [0, 90, 180, 270], format_func=lambda d: f"{d}°", horizontal=True,
                       key="match_rotate")
    fine = st.slider("Fine rotation (°, clockwise)", -20.0, 20.0, 0.0, 0.5, key="match_fine")
    xs = st.slider("Keep horizontally (% of the width)", 0, 100, (0, 100), key="match_crop_x")
    ys = st.slider("Keep vertically (% of the height)", 0, 100, (0, 100), key="match_crop_y")
    k = st.slider("References to show (k)", 1, 10, 3, key="match_k")
    manufacturer = st.selectbox("Manufacturer", [ANY, *sorted(stats["by_manufacturer"])], key="match_manufacturer")

try:
    # The adjusted query is cheap to redo from the normalised 512 px image.
    query = adjust(original, quarter + fine, (xs[0] / 100, ys[0] / 100, xs[1] / 100, ys[1] / 100), limits=get_limits())
except RaioxError as exc:
    show_error(exc)
    st.stop()
with preview:
    st.image(query.image, caption="What the model sees (normalised)", width=360)

filters = Filters(manufacturer=None if manufacturer == ANY else manufacturer)


def run_match():
    with st.spinner("Comparing with the references…"):
        return match_image(query, db=get_db(), embedder=state.embedder, threshold=threshold, k=k, filters=filters)


try:
    threshold = threshold_in_force(settings, get_db(), state.embedder.embedding_model)
    # Keyed on the query's pixels and the search parameters: feedback clicks and choosing a match to
    # compare rerun the script but neither re-embed nor log a second request.
    result = session_memo("match_result", (query.sha256, k, filters, threshold), run_match)
except RaioxError as exc:
    show_error(exc)
    st.stop()
show_answer(result)
st.caption(f"Confidence threshold {result.threshold * 100:g}%: {md_escape(result.threshold_source)}.")
if not result.matches:
    st.info("No reference has vectors for this model and filter yet: try another manufacturer, or ask "
            "staff to run `raiox reembed`.")
    st.stop()

if result.restricted_to:  # the manufacturer vote is the filter's, not the model's: only the model vote is shown
    st.plotly_chart(vote_chart(result.model_vote, f"Model, among {plot_text(result.restricted_to)}",
                               result.threshold if result.confidence_of == "model" else None))
else:
    chart_left, chart_right = st.columns(2)
    chart_left.plotly_chart(vote_chart(result.manufacturer_vote, "Manufacturer", result.threshold))
    chart_right.plotly_chart(vote_chart(result.model_vote, "Model"))

st.subheader("Most similar references")
for start in range(0, len(result.matches), 5):
    for rank, (col, m) in enumerate(zip(st.columns(5), result.matches[start:start + 5]), start=start + 1):
        with col, st.container(border=True):
            try:
                st.image(reference_thumbnail(m.object_key), width=200)
            except RaioxError as exc:
                st.caption(f"Image unavailable: {md_escape(exc)}")
            st.markdown(f"**{rank}. {md_escape(m.label)}**  \nØ {m.diameter_mm:g} mm")
            st.metric("Similarity", f"{m.similarity:.1%}")
            if m.source == "synthetic":
                st.markdown(":orange-background[Synthetic reference]")

st.subheader("Compare side by side")
# Keyed on the result: a new result's first option is shown, not the position a previous result had.
pick = st.selectbox("Reference", range(len(result.matches)), key=f"match_compare_{result.log_id}",
                    format_func=lambda i: f"{i + 1}. {result.matches[i].label} Ø {result.matches[i].diameter_mm:g} mm")
chosen = result.matches[pick]
try:
    reference = Image.open(io.BytesIO(reference_png(chosen.object_key)))
except RaioxError as exc:
    show_error(exc)
else:
    comparison = compare(query.image, reference)
    left, middle, right = st.columns(3)
    show_map = right.toggle("Similarity map: regions that look alike", key="match_similarity_map",
                            help="Each patch coloured by its best cosine similarity to the other image's patches, in "
                                 "the model's embedding space. It shows where the two look alike to the model, not "
                                 "why it matched them.")
    explained = None
    # Per session, keyed on the query's pixels, the reference and the model, never process-wide: a query is
    # patient data.
    explain_key = (query.sha256, chosen.id, state.embedder.embedding_model)
    if show_map:
        try:
            explained = session_memo("match_explain", explain_key,
                                     lambda: similarity_map(query.image, reference, state.embedder))
        except RaioxError as exc:
            show_error(exc)
    if explained is None:
        left.image(query.image, caption="Query", width=300)
        middle.image(reference, caption=f"{md_escape(chosen.label)} Ø {chosen.diameter_mm:g} mm", width=300)
    else:
        scale = colour_range(explained.query, explained.reference)
        left.image(overlay(query.image, explained.query, scale, side=300), caption="Query: regions that look alike")
        middle.image(overlay(reference, explained.reference, scale, side=300),
                     caption=f"{md_escape(chosen.label)} Ø {chosen.diameter_mm:g} mm: regions that look alike")
    right.plotly_chart(px.imshow(comparison.diff, color_continuous_scale="inferno", zmin=0, zmax=255,
                                 title="Absolute difference"))
    st.metric("SSIM", f"{comparison.ssim:.3f}", help="Structural similarity of the pixels: 1.000 means identical.")
    if explained is not None:
        show_explanation(query.image, explained, state.embedder, explain_key, scale)

st.subheader("Feedback")
with st.form("match_feedback"):
    judged = (f"The answer, reference #{result.exact.id} ({result.exact.label}), is" if result.exact is not None
              else f"The top match, {result.matches[0].label}, is")
    verdict = st.radio(md_escape(judged), ["correct", "wrong"], index=None, horizontal=True, key="match_verdict")
    right_answer = st.text_input("The right answer (optional)", max_chars=200, key="match_right_answer")
    if st.form_submit_button("Save feedback"):
        if verdict is None:
            st.warning("Choose correct or wrong first.")
        else:
            try:
                get_db().set_feedback(result.log_id, verdict, right_answer.strip() or None)
            except RaioxError as exc:
                show_error(exc)
            else:
                st.success(f"Thank you: your feedback on match #{result.log_id} is saved.")

data = result.to_json()
table = pd.DataFrame(data["matches"]).rename_axis("rank").reset_index()
table["rank"] += 1
csv_col, json_col = st.columns(2)
csv_col.download_button("Download CSV", table.to_csv(index=False), "raiox-match.csv", "text/csv")
json_col.download_button("Download JSON", json.dumps(data, indent=2), "raiox-match.json", "application/json")
