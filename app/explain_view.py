"""The match page's explanation of one compared pair: the map's figures, the occlusion check and the deletion curve."""

from __future__ import annotations

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from raiox_dashboard.widgets import DISCLAIMER, session_memo, show_error
from raiox_core.errors import RaioxError
from raiox_core.explain import format_auc, occlusion_check


def deletion_chart(curve):
    """Similarity as patches are greyed out: the map's most alike first against random orders."""
    fig = go.Figure([go.Scatter(x=curve.fractions, y=curve.importance, mode="lines+markers",
                                name=f"most alike first (area {format_auc(curve.auc_importance)})"),
                     go.Scatter(x=curve.fractions, y=curve.random, mode="lines+markers", line={"dash": "dash"},
                                name=f"random order, mean of {curve.random_orders} (area {format_auc(curve.auc_random)})")])
    fig.update_layout(title="Deletion curve", xaxis_title="share of the query's patches greyed out",
                      yaxis_title="similarity to the reference", legend={"orientation": "h", "y": -0.3}, height=380)
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    return fig


def show_explanation(query_image, explained, embedder, key, scale) -> None:
    """The map's figures in words, and the occlusion check on demand (cached per query, reference and model)."""
    st.caption(f"Colours from dark ({scale[0]:.3f}) to bright ({scale[1]:.3f}): each patch's best cosine similarity "
               f"to the other image's patches. Query map mean {explained.query.mean():.3f}, max "
               f"{explained.query.max():.3f}; the pair's cosine is {explained.pair_cosine:.4f}. Regions whose patch "
               "embeddings are alike, not a causal explanation: the occlusion check tests whether the model's "
               f"similarity depends on them. {DISCLAIMER}")
    slot = st.session_state.get("match_occlusion")
    if not st.button("Occlusion check", key="match_occlusion_go", icon=":material/grid_on:",
                     help="Greys out each patch of the query in turn (one batched pass, a few seconds) and draws "
                          "the deletion curve.") and (slot is None or slot[0] != key):
        return
    try:
        with st.spinner("Greying out each patch of the query…"):
            check = session_memo("match_occlusion", key, lambda: occlusion_check(query_image, explained, embedder))
    except RaioxError as exc:
        show_error(exc)
        return
    drops, curve = st.columns(2)
    fig = px.imshow(check.drops, color_continuous_scale="inferno", text_auto=".3f", aspect="equal",
                    title="Similarity drop when each query patch is greyed out")
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    drops.plotly_chart(fig)
    curve.plotly_chart(deletion_chart(check.deletion))
    st.caption(check.deletion.verdict)
