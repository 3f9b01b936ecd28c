"""Static plotly figures. Each ``plot_*`` function returns a ``plotly.graph_objects.Figure``
(renders in JupyterLab, under papermill and as offline HTML via ``fig.write_html``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gliofed.data.cache import load_case, read_index
from gliofed.data.manifest import MODALITIES

__all__ = ["plot_cases", "plot_learning_curves", "plot_bytes"]

_SEG_COLOURS = ["rgba(0,0,0,0)", "rgba(255,60,60,0.55)", "rgba(60,200,60,0.45)", "rgba(255,220,0,0.7)"]


def plot_cases(cache_dir: str | Path, subjects: Sequence[str], modalities: Sequence[str] = MODALITIES,
               show_mask: bool = True) -> go.Figure:
    """Axial slice through the largest tumour cross-section of each case, one row per case.

    Args:
        cache_dir: preprocessed cache.
        subjects: subject IDs (rows).
        modalities: contrasts (columns), default all four.
        show_mask: add a column with the tumour classes (1 NCR red, 2 oedema green, 3 ET yellow).

    Returns:
        plotly Figure.
    """
    index = read_index(cache_dir).set_index("subject_id")
    columns = list(modalities) + (["mask"] if show_mask else [])
    fig = make_subplots(rows=len(subjects), cols=len(columns), horizontal_spacing=0.01, vertical_spacing=0.03,
                        subplot_titles=[f"{s} · {c}" for s in subjects for c in columns])
    for r, subject in enumerate(subjects, start=1):
        has_mask = bool(index.loc[subject, "has_mask"])
        image, seg = load_case(cache_dir, subject, has_mask)
        z = int(np.argmax((np.asarray(seg) > 0).sum((1, 2)))) if seg is not None else image.shape[1] // 2
        for c, name in enumerate(columns, start=1):
            if name == "mask":
                plane = np.asarray(seg[z]) if seg is not None else np.zeros(image.shape[2:], np.uint8)
                fig.add_trace(go.Heatmap(z=np.asarray(image[MODALITIES.index("flair"), z], np.float32),
                                         colorscale="gray", showscale=False), r, c)
                scale = [[i / 3, col] for i, col in enumerate(_SEG_COLOURS)]
                fig.add_trace(go.Heatmap(z=plane, zmin=0, zmax=3, colorscale=scale, showscale=False), r, c)
            else:
                fig.add_trace(go.Heatmap(z=np.asarray(image[MODALITIES.index(name), z], np.float32),
                                         colorscale="gray", showscale=False), r, c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    for i in range(1, len(subjects) * len(columns) + 1):  # square pixels in every panel
        fig.layout[f"yaxis{i if i > 1 else ''}"].scaleanchor = f"x{i if i > 1 else ''}"
    fig.update_layout(height=220 * len(subjects), width=200 * len(columns), margin=dict(l=10, r=10, t=30, b=10))
    fig.update_annotations(font_size=10)
    return fig


_STRATEGY_COLOURS = {"centralized": "#444444", "local": "#8c8c8c", "fedavg": "#1f77b4", "fedprox": "#2ca02c",
                     "distill": "#d62728"}
_METRIC_TITLES = {"dice_WT": "Dice WT", "dice_TC": "Dice TC", "dice_ET": "Dice ET", "auc_idh": "AUC IDH",
                  "auc_codeletion": "AUC 1p/19q", "auc_mgmt": "AUC MGMT", "auc_grade": "AUC grade (macro)"}


def plot_learning_curves(history: pd.DataFrame, metrics: Sequence[str] = ("dice_WT", "auc_idh", "auc_codeletion",
                                                                          "auc_mgmt", "auc_grade")) -> go.Figure:
    """Test metrics per round, one panel per metric, one line per strategy.

    Args:
        history: concatenated ``History.to_frame()`` tables (columns ``strategy``, ``round`` and the metrics).
        metrics: which columns to plot.
    """
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[_METRIC_TITLES.get(m, m) for m in metrics])
    for strategy, group in history.groupby("strategy", sort=False):
        for c, metric in enumerate(metrics, start=1):
            fig.add_trace(go.Scatter(x=group["round"], y=group[metric], mode="lines+markers", name=strategy,
                                     legendgroup=strategy, showlegend=c == 1,
                                     line=dict(color=_STRATEGY_COLOURS.get(strategy))), 1, c)
    fig.update_xaxes(title_text="round")
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(height=320, width=260 * len(metrics), margin=dict(l=40, r=10, t=40, b=40))
    return fig


def plot_bytes(history: pd.DataFrame) -> go.Figure:
    """Bytes on the wire per round (up and down, all sites together), one bar group per strategy."""
    totals = history.groupby("strategy", sort=False)[["bytes_up", "bytes_down"]].mean() / 2**20
    fig = go.Figure([go.Bar(x=totals.index, y=totals["bytes_up"], name="up (sites → server)"),
                     go.Bar(x=totals.index, y=totals["bytes_down"], name="down (server → sites)")])
    fig.update_layout(barmode="group", yaxis_title="MiB per round (mean over rounds)", height=360, width=640,
                      margin=dict(l=60, r=10, t=30, b=40))
    return fig
