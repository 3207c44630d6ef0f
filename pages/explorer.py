"""Embedding explorer (researchers): how the implant systems cluster in the active model's vector space.

Hover shows a point's label, diameter, file and id (plotly cannot draw images in a hover box); clicking,
box- or lasso-selecting points on the 2-D map shows their thumbnails beside it. The picker beside the map
does the same for any reference, and is the way to inspect points in 3-D, where plotly offers no box or
lasso selection.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from raiox_dashboard.calibration_view import show_calibration
from raiox_dashboard.resources import (
    active_embedding_model, cached_embeddings, cached_stats, get_db, get_embedder, get_limits, get_model_state,
    get_settings, get_storage,
)
from raiox_dashboard.widgets import md_escape, missing_vectors_notice, plot_text, session_memo, show_error
from raiox_core.errors import RaioxError
from raiox_core.evaluate import TOP_K, Evaluation, evaluate
from raiox_core.images import prepare_image, thumbnail_png
from raiox_core.projection import METRICS, ProjectionParams, projection_frame
from raiox_core import projection_jobs
from raiox_core.projection_cache import cached_projection, vectors_digest
from raiox_core.sampling import stratified_sample

MIN_REFERENCES = 5
MAX_SHOWN = 12  # thumbnails shown for a box/lasso selection
MAX_POINTS = 20_000  # drawn on the map; above it a sample per model (WebGL draws 20k smoothly, 100k stalls the tab)
MAX_EVALUATED = 10_000  # the leave-one-out tables cost n² dot products: 1 s at 10k, 100 s at 100k
POLL_S = 1.0  # how often a page showing the preview looks whether the UMAP map is ready
MAX_CONFUSION_LABELS = 40  # a larger model confusion matrix shows only the most confused labels
# One symbol per model, the same in 2-D and 3-D: plotly's 3-D markers are a few glyphs, of which "cross" and
# "x" come out as thin bars (or an emoji box), so only the filled and open circle, diamond and square are used.
SYMBOLS = ["circle", "diamond", "square", "circle-open", "diamond-open", "square-open"]
QUERY_COLOUR = "black"  # no manufacturer gets black or grey (below), so the query stands out from every cluster


def _chromatic(colour: str) -> bool:
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return max(rgb) - min(rgb) >= 0x30  # greys and near-blacks would read as the query or its ring


COLOURS = [c for c in px.colors.qualitative.Dark24 + px.colors.qualitative.Light24 if _chromatic(c)]


class _Progress:
    """The progress callback for cached_projection: a status box appears only when a map is computed."""

    def __init__(self) -> None:
        self.status = None
        self.bar = None

    def __call__(self, fraction: float, text: str) -> None:
        if self.status is None:
            self.status = st.status(text, expanded=True)
            self.bar = self.status.progress(0.0)
        self.status.update(label=text)
        self.bar.progress(min(max(fraction, 0.0), 1.0), text=text)

    def done(self, text: str) -> None:
        if self.status is not None:
            self.status.update(label=text, state="complete", expanded=False)


@st.fragment(run_every=POLL_S)
def _umap_progress(key: str) -> None:
    """The background fit's progress, redrawn every POLL_S; once the map is ready the whole page reruns to
    show it (and, drawn no more, this bar goes with that run)."""
    job = projection_jobs.status(key)
    if job is None or job.state != "running":
        st.rerun(scope="app")
    st.progress(job.fraction, text=job.text)


def _stratified(labels: pd.DataFrame, cap: int) -> np.ndarray:
    """Row indices of a sample per manufacturer + model (all rows under the cap)."""
    return stratified_sample((labels["manufacturer"] + "\x1f" + labels["model"]).tolist(), cap)


@st.cache_data(max_entries=256, show_spinner=False)
def _thumbnail(object_key: str) -> bytes:
    return thumbnail_png(get_storage().get(object_key), side=200, limits=get_limits())


def _embed_query(upload, embedding_model: str) -> tuple[np.ndarray, bytes]:
    """(unit vector, thumbnail) of an uploaded X-ray, once per upload and model in this browser session.

    A session memo, not st.cache_data: that cache is shared by every user of the server, and an uploaded
    X-ray and what is derived from it stay with the session that sent it.
    """
    def compute() -> tuple[np.ndarray, bytes]:
        with st.spinner("Embedding the X-ray…"):
            prepared = prepare_image(upload.getvalue(), get_limits())
            embedder = get_embedder()
            if embedder.embedding_model != embedding_model:
                raise RaioxError(f"The loaded model is {embedder.embedding_model}, but the map shows {embedding_model}; "
                                 "reload the page.")
            return embedder.encode_one(prepared.image), thumbnail_png(prepared.png, side=200, limits=get_limits())

    return session_memo("explorer_query_embedding", (upload.file_id, embedding_model), compute)


def _sampled_evaluation(name: str, labels: pd.DataFrame, vectors: np.ndarray) -> tuple[Evaluation, int]:
    """The evaluation of a stratified sample of at most MAX_EVALUATED references, and the sample's size."""
    rows = _stratified(labels, MAX_EVALUATED)
    subset = labels.iloc[rows][["id", "manufacturer", "model"]].reset_index(drop=True)
    matrix = vectors[rows] if len(rows) < len(labels) else vectors
    return _evaluation(name, vectors_digest(subset["id"].to_numpy(), matrix), subset, matrix), len(rows)


def _sample_note(evaluated: int, total: int) -> None:
    if evaluated < total:
        st.caption(f"Computed on a sample of {evaluated:,} of {total:,} references, drawn per model (every model kept, "
                   "the largest ones thinned): each is answered by its nearest others within the sample.")


@st.cache_data(max_entries=4, show_spinner="Evaluating the clusters (leave-one-out)…")
def _evaluation(embedding_model: str, digest: str, labels: pd.DataFrame, _vectors: np.ndarray) -> Evaluation:
    # The vectors are keyed by their digest (hashing the matrix again would be slow); labels by value.
    return evaluate(_vectors, labels["manufacturer"].tolist(), labels["model"].tolist(), labels["id"].tolist())


def _controls() -> ProjectionParams:
    cols = st.columns([1.2, 0.8, 1.5, 1.5, 1.2])
    method = cols[0].radio("Method", ["UMAP", "PCA"], horizontal=True, key="explorer_method",
                           help="PCA is instant and linear; UMAP shows local structure but takes longer "
                                "the first time.")
    three_d = cols[1].toggle("3-D", key="explorer_3d")
    umap_off = method == "PCA"
    n_neighbors = cols[2].slider("n_neighbors", 2, 100, 15, key="explorer_neighbors", disabled=umap_off,
                                 help="Small: local detail; large: global layout. Lowered automatically below n - 1.")
    min_dist = cols[3].slider("min_dist", 0.0, 0.99, 0.1, step=0.01, key="explorer_min_dist", disabled=umap_off,
                              help="How tightly UMAP packs similar points.")
    metric = cols[4].selectbox("metric", METRICS, key="explorer_metric", disabled=umap_off)
    return ProjectionParams(method=method.lower(), n_components=3 if three_d else 2, n_neighbors=n_neighbors,
                            min_dist=min_dist, metric=metric)


def _figure(df: pd.DataFrame, dims: int, query_xy: np.ndarray | None, neighbour_ids: list[int]) -> go.Figure:
    # Plotly renders a little HTML in names, legends and hover: user text goes in escaped. The diameter is
    # shown as stored (3.75 stays 3.75), not rounded by a number format.
    df = df.assign(**{c: df[c].map(plot_text) for c in ("manufacturer", "model", "label", "source_filename")},
                   diameter_text=df["diameter"].map(lambda d: f"{d:g}"))
    hover = {"diameter_text": True, "source_filename": True, "id": True, "manufacturer": False, "model": False,
             "diameter": False, "x": False, "y": False}
    common = dict(color="manufacturer", symbol="model", hover_name="label", custom_data=["id"],
                  color_discrete_sequence=COLOURS, symbol_sequence=SYMBOLS,
                  labels={"source_filename": "file", "diameter_text": "diameter (mm)"})
    if dims == 3:
        fig = px.scatter_3d(df, x="x", y="y", z="z", hover_data={**hover, "z": False}, **common)
        fig.update_traces(marker_size=4)
    else:
        fig = px.scatter(df, x="x", y="y", hover_data=hover, render_mode="webgl" if len(df) > 1000 else "auto", **common)
        fig.update_traces(marker_size=9 if len(df) <= 2000 else 4)  # small dots where thousands overlap
    ring = df[df["id"].isin(neighbour_ids)]
    if len(ring):
        trace = go.Scatter3d if dims == 3 else go.Scatter
        xyz = {"x": ring["x"], "y": ring["y"], **({"z": ring["z"]} if dims == 3 else {})}
        fig.add_trace(trace(**xyz, mode="markers", name="query's neighbours", customdata=ring[["id"]].to_numpy(),
                            hovertext=ring["label"], hoverinfo="text",
                            marker=dict(symbol="circle-open", size=14 if dims == 2 else 8, color="black",
                                        line=dict(width=2, color="black"))))
    if query_xy is not None:
        trace = go.Scatter3d if dims == 3 else go.Scatter
        xyz = {"x": [query_xy[0]], "y": [query_xy[1]], **({"z": [query_xy[2]]} if dims == 3 else {})}
        fig.add_trace(trace(**xyz, mode="markers", name="query", hovertext=["uploaded X-ray"], hoverinfo="text",
                            marker=dict(symbol="diamond" if dims == 3 else "star", size=10 if dims == 3 else 20,
                                        color=QUERY_COLOUR, line=dict(width=1, color="white"))))
    fig.update_layout(height=640, legend=dict(itemsizing="constant"), margin=dict(l=10, r=10, t=30, b=10))
    return fig


def _show_references(df: pd.DataFrame, ids: list[int]) -> None:
    rows = df.set_index("id")
    for ref_id in ids[:MAX_SHOWN]:
        if ref_id not in rows.index:
            continue
        r = rows.loc[ref_id]
        caption = md_escape(f"#{ref_id} · {r['label']} · {r['diameter']:g} mm · {r['source_filename']}")
        try:
            st.image(_thumbnail(r["object_key"]), caption=caption)
        except RaioxError as exc:  # the image is missing or unreadable: the label is still useful
            st.caption(f"{caption} (no preview: {exc})")
    if len(ids) > MAX_SHOWN:
        st.caption(f"Showing {MAX_SHOWN} of {len(ids)} selected points.")


def _confusion_heatmap(cm: pd.DataFrame, title: str, key: str | None = None) -> None:
    if len(cm) > MAX_CONFUSION_LABELS:
        errors = cm.sum(axis=1) - np.diag(cm) + cm.sum(axis=0) - np.diag(cm)
        keep = errors.sort_values(ascending=False).index[:MAX_CONFUSION_LABELS]
        keep = [label for label in cm.index if label in set(keep)]
        cm = cm.loc[keep, keep]
        st.caption(f"The {MAX_CONFUSION_LABELS} labels with the most confusions of {len(errors)}.")
    fig = px.imshow(cm, text_auto=True, color_continuous_scale="Blues", aspect="auto",
                    labels=dict(x="predicted (nearest other reference)", y="true", color="references"), title=title)
    fig.update_layout(height=max(320, 28 * len(cm) + 160), margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(fig, width="stretch", key=key)


def _compare_models(embedding_model: str, labels: pd.DataFrame, vectors: np.ndarray) -> None:
    """This model and another stored one side by side on the references both have vectors for: leave-one-out
    accuracy, the cluster table and the model confusion of each (an adapter of `raiox train` beside its base)."""
    st.subheader("Compare two models")
    others = [m for m in cached_stats()["embedding_models"] if m != embedding_model]
    if not others:
        st.caption("Only this model's vectors are stored. `raiox reembed --model ... --pretrained ...` stores another "
                   "model's; an adapter adopted by `raiox train` stores its own beside its base model's.")
        return
    other = st.selectbox("Compare with", others, index=None, key="explorer_compare",
                         placeholder="another embedding model stored for these references")
    if other is None:
        return
    try:
        other_labels, other_vectors = cached_embeddings(other)
    except RaioxError as exc:
        show_error(exc)
        return
    common = np.intersect1d(labels["id"].to_numpy(), other_labels["id"].to_numpy())
    if len(common) < MIN_REFERENCES:
        st.info(f"Only {len(common)} references have vectors of both models; the comparison needs {MIN_REFERENCES}.")
        return
    st.caption(f"On the {len(common)} references with vectors of both models, each answered by its nearest others "
               "(leave-one-out, as in the table above).")
    columns = st.columns(2)
    for col, (name, rows, matrix) in zip(columns, ((embedding_model, labels, vectors), (other, other_labels, other_vectors))):
        keep = rows["id"].isin(common).to_numpy()
        ev, evaluated = _sampled_evaluation(name, rows.loc[keep].reset_index(drop=True), matrix[keep])
        with col:
            st.markdown(f"**{md_escape(name)}**")
            _sample_note(evaluated, len(common))
            if "+adapter:" in name:
                st.caption("An adapter learnt from these very references: its leave-one-out figures flatter it. "
                           "`raiox train` judged it by grouped cross-validation instead.")
            figures = st.columns(4)
            for spot, (title, key) in zip(figures, (("Manufacturer top-1", "top1_manufacturer"),
                                                    (f"Manufacturer top-{TOP_K}", f"top{TOP_K}_manufacturer"),
                                                    ("Model top-1", "top1_model"), (f"Model top-{TOP_K}", f"top{TOP_K}_model"))):
                spot.metric(title, f"{ev.overall[key]:.0%}")
            st.dataframe(ev.by_manufacturer, hide_index=True, width="stretch", key=f"explorer_compare_table_{name}")
            _confusion_heatmap(ev.confusion_model, "Model of the nearest other reference", key=f"explorer_compare_cm_{name}")


st.title("Embedding explorer")
settings = get_settings()
embedding_model = active_embedding_model()  # the untrained id after a demo's fallback: the vectors that exist
st.caption(f"How the reference implants cluster in the vector space of `{embedding_model}`. Only this model's vectors "
           "are shown; each point is one reference.")

missing_vectors_notice("explorer")
try:
    labels, vectors = cached_embeddings(embedding_model)
except RaioxError as exc:
    show_error(exc)
    st.stop()

if len(labels) < MIN_REFERENCES:
    if not get_model_state().usable:
        st.stop()  # the notice above says why nothing can be shown: advice to add references would mislead
    st.info(
        f"The explorer needs at least {MIN_REFERENCES} references with `{embedding_model}` vectors; there "
        f"{'is' if len(labels) == 1 else 'are'} {len(labels)}. Add labelled X-rays on the **Ingest** page (staff) "
        "or with `raiox ingest PATH…`; `raiox demo --no-app` seeds a synthetic set, and `raiox reembed` computes "
        "this model's vectors for references stored under another model."
    )
    st.stop()

params = _controls()
cache_dir = settings.data_dir / "projections"
ids = labels["id"].to_numpy()
progress_slot = st.empty()  # the same slot every run: emptied on the run that finds the map ready
job = None
try:
    if params.method == "umap":  # fitted in the background; a PCA of the same vectors shows meanwhile
        job = projection_jobs.request(cache_dir, embedding_model, params, ids=ids, vectors=vectors)
    if job is not None and job.state == "ready":
        projection = job.projection
    else:
        preview = replace(params, method="pca") if job is not None else params
        progress = _Progress()  # a status box only when the PCA is computed here, not found cached
        projection = cached_projection(cache_dir, embedding_model, ids=ids, vectors=vectors, params=preview,
                                       progress=progress)
        progress.done(f"PCA map of {len(labels)} references computed in {projection.seconds:.1f} s and cached.")
except RaioxError as exc:
    show_error(exc)
    st.stop()
if job is not None and job.state == "running":
    with progress_slot.container():
        st.caption(f"UMAP map of {len(labels)} references being computed in the background"
                   f"{' by another dashboard process' if job.elsewhere else ''}; the PCA map below shows meanwhile "
                   "and is replaced when it is ready.")
        _umap_progress(job.key)
elif job is not None and job.state == "failed":
    with progress_slot.container():
        st.error(f"The UMAP map could not be computed: {job.error} The PCA map is shown instead.")
        if st.button("Try UMAP again", key="explorer_umap_retry"):
            projection_jobs.retry(job.key)
            st.rerun()

df = projection_frame(projection, labels, extra=["source_filename", "object_key"])
df["label"] = df["manufacturer"] + " " + df["model"]
dims = projection.n_components
info = f"{projection.method.upper()} · {len(df)} references · {df['manufacturer'].nunique()} manufacturers · " \
       f"{df['label'].nunique()} models"
if projection.method == "umap":
    info += f" · n_neighbors={projection.n_neighbors}, min_dist={params.min_dist:g}, metric={params.metric}"
st.caption(info + (" · loaded from cache" if projection.source != "computed" else ""))
if projection.note:
    st.info(projection.note)
shown_rows = _stratified(df, MAX_POINTS)
shown_df = df.iloc[shown_rows] if len(shown_rows) < len(df) else df
if len(shown_df) < len(df):
    st.caption(f"Showing {len(shown_df):,} of {len(df):,} references on the map, sampled per model (every model "
               "kept, the largest ones thinned); the download holds them all.")

map_col, side_col = st.columns([3, 1])

with side_col:
    st.markdown("**Place an X-ray on the map**")
    upload = st.file_uploader("Query X-ray", key="explorer_query", label_visibility="collapsed",
                              help="Projected onto the existing map (no refit); its nearest references are ringed.")
    k = st.slider("Neighbours to ring", 1, 20, 5, key="explorer_k")
    query_xy, neighbour_ids = None, []
    if upload is None:
        st.session_state.pop("explorer_query_embedding", None)  # removing the file forgets what came of it
    else:
        try:
            query_vector, query_thumb = _embed_query(upload, embedding_model)
            neighbours = get_db().search(query_vector, embedding_model, k=k)
            with st.spinner("Placing the X-ray on the map…"):
                query_xy = projection.transform(query_vector)[0]
        except RaioxError as exc:
            show_error(exc)
        else:
            neighbour_ids = [n["id"] for n in neighbours]
            st.image(query_thumb, caption=md_escape(upload.name))

with map_col:
    # The query's neighbours are drawn even when the sample left them out.
    extra = df[df["id"].isin(neighbour_ids) & ~df["id"].isin(shown_df["id"])]
    plotted = pd.concat([shown_df, extra]) if len(extra) else shown_df
    event = st.plotly_chart(_figure(plotted, dims, query_xy, neighbour_ids), width="stretch", key="explorer_map",
                            on_select="rerun", selection_mode=("points", "box", "lasso"))
    if neighbour_ids:  # under the map, not in the narrow side column, which would cut the similarity off
        st.markdown("**Nearest references of the X-ray**")
        st.dataframe(
            pd.DataFrame([{"reference": f"{n['manufacturer']} {n['model']}", "mm": f"{n['diameter_mm']:g}",
                           "similarity": round(float(n["similarity"]), 3), "id": n["id"]} for n in neighbours]),
            hide_index=True, width="stretch", key="explorer_neighbours",
            column_config={"similarity": st.column_config.NumberColumn(format="%.3f")},
        )
    st.download_button(
        "Download the map as CSV", df[["id", "manufacturer", "model", "diameter", *["x", "y", "z"][:dims]]]
        .to_csv(index=False).encode(), file_name=f"raiox-{projection.method}-{dims}d.csv", mime="text/csv",
        key="explorer_download",
    )

with side_col:
    st.markdown("**Selected references**")
    points = event["selection"]["points"] if event else []
    selected = [int(p["customdata"][0]) for p in points if p.get("customdata")]  # the query star has none
    selected = list(dict.fromkeys(selected))  # a neighbour ring duplicates its point
    names = dict(zip(shown_df["id"].tolist(), shown_df["label"].tolist()))  # one lookup per option, not a scan
    picked = st.selectbox(
        "Pick a reference", list(names), index=None, key="explorer_pick",
        format_func=lambda i: f"#{i} · {names[i]}", placeholder="or select points on the map",
    )
    shown = selected or ([picked] if picked is not None else [])
    if shown:
        _show_references(df, shown)
    else:
        st.caption("Click, box- or lasso-select points on the 2-D map, or pick a reference above.")

st.divider()
st.subheader("Cluster quality")
st.caption(
    "Computed on the full vectors, not the map. For each reference, the others are ranked by cosine similarity "
    f"(leave-one-out): **top-1** = its nearest other reference has the same manufacturer; **top-{TOP_K}** = the "
    f"manufacturer appears among its {TOP_K} nearest. **Cohesion** = mean cosine distance within the manufacturer "
    "(lower is tighter), **separation** = mean cosine distance to the other manufacturers (higher is better), "
    "**silhouette** from -1 to 1 (higher: better separated). `*_model` columns score the exact model."
)
try:
    evaluation, evaluated = _sampled_evaluation(embedding_model, labels, vectors)
except RaioxError as exc:
    show_error(exc)
    st.stop()
_sample_note(evaluated, len(labels))

overall = evaluation.overall
cols = st.columns(4)
cols[0].metric("Manufacturer top-1", f"{overall['top1_manufacturer']:.0%}")
cols[1].metric(f"Manufacturer top-{TOP_K}", f"{overall[f'top{TOP_K}_manufacturer']:.0%}")
cols[2].metric("Model top-1", f"{overall['top1_model']:.0%}")
cols[3].metric(f"Model top-{TOP_K}", f"{overall[f'top{TOP_K}_model']:.0%}")

share = st.column_config.NumberColumn(format="percent")
three = st.column_config.NumberColumn(format="%.3f")
st.dataframe(
    evaluation.by_manufacturer, hide_index=True, width="stretch", key="explorer_quality",
    column_config={"cohesion": three, "separation": three, "silhouette": three, "top1": share,
                   f"top{TOP_K}": share, "top1_model": share, f"top{TOP_K}_model": share},
)
with st.expander("Per model"):
    st.dataframe(evaluation.by_model, hide_index=True, width="stretch",
                 column_config={"cohesion": three, "separation": three, "silhouette": three, "top1": share,
                                f"top{TOP_K}": share})

tab_m, tab_l = st.tabs(["Confusion: manufacturer", "Confusion: model"])
with tab_m:
    _confusion_heatmap(evaluation.confusion_manufacturer, "Manufacturer of the nearest other reference")
with tab_l:
    _confusion_heatmap(evaluation.confusion_model, "Model of the nearest other reference")

st.divider()
_compare_models(embedding_model, labels, vectors)

st.divider()
show_calibration(embedding_model)
