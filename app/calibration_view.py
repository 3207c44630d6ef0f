"""The explorer's calibration section: the precision/coverage curve of /match's confidence from the latest
`raiox evaluate`, with the threshold in force marked."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from raiox_core import calibration
from raiox_core.errors import RaioxError
from raiox_core.threshold import threshold_in_force

from .resources import get_db, get_settings
from .widgets import md_escape, show_error


def _curve_figure(report: dict, threshold: float) -> go.Figure:
    points = [p for p in report["precision_coverage"] if p["precision"] is not None]
    fig = go.Figure()
    fig.add_scatter(x=[p["threshold"] for p in report["precision_coverage"]],
                    y=[p["coverage"] for p in report["precision_coverage"]], name="answered confidently (coverage)")
    fig.add_scatter(x=[p["threshold"] for p in points], y=[p["precision"] for p in points],
                    name="right among those (precision)")
    fig.add_vline(x=threshold, line_dash="dash")
    fig.add_annotation(x=threshold, y=1.02, yref="paper", yanchor="bottom", showarrow=False,
                       text=f"threshold in force {threshold:.0%}")
    fig.update_layout(xaxis_title="confidence threshold", yaxis_title="share of references", height=380,
                      margin={"t": 50}, legend={"orientation": "h", "y": -0.25})
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05])
    return fig


def show_calibration(embedding_model: str) -> None:
    st.subheader("Confidence calibration")
    try:
        report = calibration.latest(get_db(), embedding_model)
        threshold = threshold_in_force(get_settings(), get_db(), embedding_model)
    except RaioxError as exc:
        show_error(exc)
        return
    st.caption(f"Threshold in force: {threshold.value:.0%}, {md_escape(threshold.source)}.")
    if report is None:
        st.info("No calibration for this model yet: `raiox evaluate` answers every reference from the others "
                "(leaving out its group of near-identical images) and stores how often a confident answer is right "
                "at each threshold.")
        return
    a = report["accuracy"]
    st.caption(f"From `raiox evaluate` of {report['computed_at'][:10]} on {report['references']} references in "
               f"{report['groups']} groups, with the vote of /match: manufacturer top-1 "
               f"{a['top1_manufacturer']['value']:.0%} ({a['top1_manufacturer']['low']:.0%}-"
               f"{a['top1_manufacturer']['high']:.0%}), model top-1 {a['top1_model']['value']:.0%} "
               f"({a['top1_model']['low']:.0%}-{a['top1_model']['high']:.0%}), 95% intervals. RAIOX_TARGET_PRECISION "
               "picks the lowest threshold from which on the precision reaches the target.")
    st.plotly_chart(_curve_figure(report, threshold.value), width="stretch", key="explorer_calibration")
