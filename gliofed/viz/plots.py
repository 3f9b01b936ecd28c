"""Static plotly figures. Each ``plot_*`` function returns a ``plotly.graph_objects.Figure``
(renders in JupyterLab, under papermill and as offline HTML via ``fig.write_html``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gliofed.data.cache import load_case, read_index
from gliofed.data.manifest import MODALITIES

__all__ = ["plot_cases"]

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
