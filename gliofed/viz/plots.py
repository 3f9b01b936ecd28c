"""Static plotly figures. Each ``plot_*`` function returns a ``plotly.graph_objects.Figure``
(renders in JupyterLab, under papermill and as offline HTML via ``fig.write_html``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.metrics import roc_auc_score, roc_curve

from gliofed.data.cache import load_case, read_index
from gliofed.metrics import per_site_metrics
from gliofed.viz.colours import CAM_COLORSCALE
from gliofed.viz.slices import (
    brain_mask,
    estimated_spacing,
    intensity_window,
    largest_tumour_slice,
    plane_geometry,
    spacing_from_index,
)
from gliofed.vocab import MARKER_CLASSES, MARKERS, MODALITIES

__all__ = ["plot_cases", "plot_learning_curves", "plot_bytes", "plot_roc", "plot_dice_violin", "plot_per_site",
           "plot_ablation", "plot_gradcam", "save_html", "plot_reliability", "plot_site_curves",
           "plot_accuracy_vs_bytes", "plot_drift", "plot_synthetic_vs_real", "plot_audit", "plot_toy_average"]

_SEG_COLOURS = ["rgba(0,0,0,0)", "rgba(255,60,60,0.55)", "rgba(60,200,60,0.45)", "rgba(255,220,0,0.7)"]  # as the viewer


def plot_cases(cache_dir: str | Path, subjects: Sequence[str], modalities: Sequence[str] = MODALITIES,
               show_mask: bool = True) -> go.Figure:
    """Axial slice through the largest tumour cross-section of each case, one row per case.

    Voxels are drawn at their size (the cache's spacing, else :func:`~gliofed.viz.slices.estimated_spacing`), in
    the radiological convention (patient's right on the left), each contrast with one grey-level window per volume.

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
        image = np.asarray(image, np.float32)
        z = largest_tumour_slice(seg)
        z = image.shape[1] // 2 if z is None else z
        brain = brain_mask(image)
        spacing = spacing_from_index(index.loc[subject]) or estimated_spacing(image.shape[1:])
        geometry = plane_geometry(image.shape[1:], spacing, "axial")
        position = dict(x0=geometry.x0, dx=geometry.dx, y0=geometry.y0, dy=geometry.dy)
        for c, name in enumerate(columns, start=1):
            contrast = "flair" if name == "mask" else name
            channel = image[MODALITIES.index(contrast)]
            low, high = intensity_window(channel, brain)
            fig.add_trace(go.Heatmap(z=np.where(brain[z], channel[z], np.nan), zmin=low, zmax=high, colorscale="gray",
                                     showscale=False, **position), r, c)
            if name == "mask":
                plane = np.asarray(seg[z]) if seg is not None else np.zeros(image.shape[2:], np.uint8)
                scale = [[i / 3, col] for i, col in enumerate(_SEG_COLOURS)]
                fig.add_trace(go.Heatmap(z=plane, zmin=0, zmax=3, colorscale=scale, showscale=False, **position), r, c)
            fig.update_xaxes(range=list(geometry.x_range), row=r, col=c)
            fig.update_yaxes(range=list(geometry.y_range), row=r, col=c)
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, constrain="domain")
    _lock_aspect(fig, len(subjects) * len(columns))
    fig.update_layout(height=220 * len(subjects), width=200 * len(columns), margin=dict(l=10, r=10, t=30, b=10),
                      plot_bgcolor="black")
    fig.update_annotations(font_size=10)
    return fig


def _lock_aspect(fig: go.Figure, panels: int) -> None:
    """One data unit (mm) is as long on x as on y in every panel: true aspect ratio."""
    for i in range(1, panels + 1):
        fig.layout[f"yaxis{i if i > 1 else ''}"].scaleanchor = f"x{i if i > 1 else ''}"


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


_MARKER_TITLES = {"idh": "IDH", "codeletion": "1p/19q", "mgmt": "MGMT", "grade": "grade (one-vs-rest)"}
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


def _as_runs(predictions: pd.DataFrame | dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {"model": predictions} if isinstance(predictions, pd.DataFrame) else dict(predictions)


def _colour(name: str, i: int) -> str:
    return _STRATEGY_COLOURS.get(name, _PALETTE[i % len(_PALETTE)])


def plot_roc(predictions: pd.DataFrame | dict[str, pd.DataFrame], markers: Sequence[str] = MARKERS) -> go.Figure:
    """ROC curves, one panel per marker, one curve per model with its AUC in the legend.

    Args:
        predictions: a :func:`gliofed.engine.predict` table, or ``{name: table}`` to compare models.
        markers: panels; grade is drawn one-vs-rest per grade (II, III, IV) for each model.

    Cases with an unknown label are left out; a curve needs both classes among the known labels.
    """
    runs = _as_runs(predictions)
    fig = make_subplots(rows=1, cols=len(markers), subplot_titles=[_MARKER_TITLES.get(m, m) for m in markers])
    for c, marker in enumerate(markers, start=1):
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#bbbbbb"),
                                 showlegend=False, hoverinfo="skip"), 1, c)
        for i, (name, table) in enumerate(runs.items()):
            known = table[table[marker] >= 0]
            classes = MARKER_CLASSES[marker]
            curves = ([(f"{name} · {classes[k]}", known[marker] == k, known[f"p_{marker}_{k}"])
                       for k in range(len(classes))]
                      if marker == "grade" else [(name, known[marker] == 1, known[f"p_{marker}_1"])])
            for j, (label, y, p) in enumerate(curves):
                if y.nunique() < 2:
                    continue
                fpr, tpr, _ = roc_curve(y, p)
                dash = ["solid", "dash", "dot"][j % 3] if marker == "grade" else "solid"
                short = _MARKER_TITLES[marker].split()[0]
                auc = roc_auc_score(y, p)
                fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{label} ({short}) AUC {auc:.2f}",
                                         line=dict(color=_colour(name, i), dash=dash)), 1, c)
    fig.update_xaxes(title_text="1 - specificity", range=[0, 1])
    fig.update_yaxes(title_text="sensitivity", range=[0, 1.02])
    fig.update_layout(height=380, width=330 * len(markers) + 200, margin=dict(l=50, r=10, t=40, b=50))
    return fig


def plot_dice_violin(predictions: pd.DataFrame | dict[str, pd.DataFrame],
                     regions: Sequence[str] = ("WT", "TC", "ET")) -> go.Figure:
    """Dice per case as violins (the seed's Fig. 4a): one violin per region and model, cases with a mask only."""
    fig = go.Figure()
    for i, (name, table) in enumerate(_as_runs(predictions).items()):
        masked = table[table["has_mask"]]
        x = np.concatenate([[region] * len(masked) for region in regions])
        y = np.concatenate([masked[f"dice_{region}"].to_numpy() for region in regions])
        fig.add_trace(go.Violin(x=x, y=y, name=name, legendgroup=name, box_visible=True, meanline_visible=True,
                                points="all", pointpos=0, jitter=0.3, marker=dict(size=3),
                                line=dict(color=_colour(name, i))))
    fig.update_layout(violinmode="group", yaxis=dict(title="Dice", range=[0, 1.02]), xaxis_title="region",
                      height=380, width=640, margin=dict(l=50, r=10, t=30, b=40))
    return fig


def plot_per_site(predictions: pd.DataFrame | dict[str, pd.DataFrame],
                  metrics: Sequence[str] = ("dice_WT", "auc_idh", "auc_grade")) -> go.Figure:
    """Per-site bars, one panel per metric, one bar group per model (sites that cannot be scored stay empty)."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[_METRIC_TITLES.get(m, m) for m in metrics])
    for i, (name, table) in enumerate(_as_runs(predictions).items()):
        per_site = per_site_metrics(table)
        for c, metric in enumerate(metrics, start=1):
            fig.add_trace(go.Bar(x=per_site.index, y=per_site[metric], name=name, legendgroup=name, showlegend=c == 1,
                                 marker_color=_colour(name, i),
                                 customdata=per_site["n"], hovertemplate="%{x}: %{y:.2f} (n=%{customdata})"), 1, c)
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(barmode="group", height=360, width=300 * len(metrics) + 150, margin=dict(l=40, r=10, t=40, b=80))
    return fig


def plot_ablation(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> go.Figure:
    """The modality ablation (the seed's Fig. 3): one bar group per metric, one bar per modality set.

    Args:
        table: long table with columns ``modalities``, ``metric``, ``value`` and optionally ``ci_low`` /
            ``ci_high`` (drawn as error bars).
        metrics: metrics to show, in order (default: all in the table).
    """
    metrics = list(metrics or dict.fromkeys(table["metric"]))
    fig = go.Figure()
    for i, (name, group) in enumerate(table.groupby("modalities", sort=False)):
        group = group.set_index("metric").reindex(metrics)
        error = None
        if {"ci_low", "ci_high"} <= set(group.columns):
            error = dict(type="data", symmetric=False, array=(group["ci_high"] - group["value"]).to_numpy(),
                         arrayminus=(group["value"] - group["ci_low"]).to_numpy())
        fig.add_trace(go.Bar(x=[_METRIC_TITLES.get(m, m) for m in metrics], y=group["value"], name=name,
                             error_y=error, marker_color=_PALETTE[i % len(_PALETTE)]))
    fig.update_layout(barmode="group", yaxis=dict(title="test score", range=[0, 1.05]), legend_title="modalities",
                      height=380, width=200 + 120 * len(metrics), margin=dict(l=50, r=10, t=30, b=40))
    return fig


def plot_gradcam(image: np.ndarray, cams: dict[str, np.ndarray], mask: np.ndarray | None = None,
                 slice_index: int | None = None, title: str = "", spacing: Sequence[float] | None = None,
                 threshold: float = 0.3) -> go.Figure:
    """Axial Grad-CAM overlays of one case: one panel per head, the whole-tumour outline on top.

    Each map is drawn in the viewer's sequential scale (:data:`~gliofed.viz.colours.CAM_COLORSCALE`, no label colour
    in it) and is transparent below ``threshold``, so the anatomy
    stays visible; one colour bar serves all panels. Voxels are drawn at their size, patient's right on the left.

    Args:
        image: (D, H, W) background contrast (e.g. FLAIR).
        cams: head -> (D, H, W) map in [0, 1].
        mask: (D, H, W) class map or bool whole-tumour mask; its outline is drawn in white.
        slice_index: axial slice (default: the largest tumour cross-section, else the middle).
        title: figure title.
        spacing: (D, H, W) voxel spacing (default: estimated from the shape).
        threshold: Grad-CAM level below which the map is transparent (default 0.3).

    Returns:
        plotly Figure, at most 1,100 px wide for five heads.
    """
    image = np.asarray(image, dtype=np.float32)
    if slice_index is None:
        slice_index = largest_tumour_slice(mask)
        slice_index = image.shape[0] // 2 if slice_index is None else slice_index
    geometry = plane_geometry(image.shape, spacing or estimated_spacing(image.shape), "axial")
    position = dict(x0=geometry.x0, dx=geometry.dx, y0=geometry.y0, dy=geometry.dy)
    brain = image != 0
    low, high = intensity_window(image, brain)
    background = np.where(brain[slice_index], image[slice_index], np.nan)
    fig = make_subplots(rows=1, cols=len(cams), subplot_titles=[f"Grad-CAM {head}" for head in cams],
                        horizontal_spacing=0.015)
    for c, cam in enumerate(cams.values(), start=1):
        fig.add_trace(go.Heatmap(z=background, zmin=low, zmax=high, colorscale="gray", showscale=False,
                                 hoverinfo="skip", **position), 1, c)
        plane = np.asarray(cam, np.float32)[slice_index]
        fig.add_trace(go.Heatmap(z=np.where(plane >= threshold, plane, np.nan), zmin=threshold, zmax=1,
                                 colorscale=CAM_COLORSCALE, opacity=0.7, showscale=c == 1, hoverinfo="skip",
                                 colorbar=dict(title=dict(text=f"Grad-CAM \u2265 {threshold:g}", side="right"),
                                               thickness=12, len=0.8), **position), 1, c)
        if mask is not None:
            outline = np.pad((np.asarray(mask)[slice_index] > 0).astype(np.float32), 1)
            # coloring="lines" ignores line.color: a constant colour scale makes the outline white
            fig.add_trace(go.Contour(z=outline, showscale=False, contours=dict(start=0.5, end=0.5, size=1,
                                     coloring="lines"), colorscale=[[0, "white"], [1, "white"]], line=dict(width=2),
                                     hoverinfo="skip", name="ground truth (whole tumour)",
                                     x0=geometry.x0 - geometry.dx, dx=geometry.dx, y0=geometry.y0 - geometry.dy,
                                     dy=geometry.dy), 1, c)
        fig.update_xaxes(range=list(geometry.x_range), row=1, col=c)
        fig.update_yaxes(range=list(geometry.y_range), row=1, col=c)
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, constrain="domain")
    _lock_aspect(fig, len(cams))
    left, right, _, _ = geometry.labels  # the same for every panel: R left of the first, L right of the last
    last = len(cams) if len(cams) > 1 else ""
    for text, x, axis, anchor in ((left, 0, "x", "right"), (right, 1, f"x{last}", "left")):
        fig.add_annotation(text=text, x=x, y=0.5, xref=f"{axis} domain", yref="y domain", xanchor=anchor,
                           showarrow=False, font=dict(size=12))
    key = "white line: ground-truth whole tumour" if mask is not None else ""
    fig.update_layout(title=dict(text="<br>".join(filter(None, [title, f"<sup>{key}</sup>" if key else ""])) or None),
                      height=330, width=190 * len(cams) + 150, plot_bgcolor="black", showlegend=False,
                      margin=dict(l=20, r=20, t=70, b=20))
    return fig


def plot_reliability(predictions: pd.DataFrame | dict[str, pd.DataFrame], markers: Sequence[str] = ("idh", "codeletion",
                                                                                                   "mgmt"),
                     bins: int = 5) -> go.Figure:
    """Reliability diagrams: per binary marker, the observed share of positives against the mean predicted
    probability in ``bins`` equal-width bins (scikit-learn's ``calibration_curve``), one line per model, the diagonal
    where a calibrated model lies, and each model's expected calibration error (as Table 3 reports it) in the legend.

    Args:
        predictions: a :func:`gliofed.engine.predict` table, or ``{name: table}``.
        markers: binary markers, one panel each.
        bins: probability bins (default 5: test splits are small).
    """
    from sklearn.calibration import calibration_curve

    from gliofed.metrics import expected_calibration_error

    runs = _as_runs(predictions)
    fig = make_subplots(rows=1, cols=len(markers), subplot_titles=[_MARKER_TITLES.get(m, m) for m in markers])
    for c, marker in enumerate(markers, start=1):
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#bbbbbb"),
                                 showlegend=c == 1, name="calibrated", hoverinfo="skip"), 1, c)
        for i, (name, table) in enumerate(runs.items()):
            known = table[table[marker] >= 0]
            if known[marker].nunique() < 2:
                continue
            y, p = known[marker].to_numpy(), known[f"p_{marker}_1"].to_numpy()
            observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
            ece = expected_calibration_error(y, p)
            fig.add_trace(go.Scatter(x=predicted, y=observed, mode="lines+markers", line=dict(color=_colour(name, i)),
                                     name=f"{name} ({_MARKER_TITLES[marker]}) ECE {ece:.2f}"), 1, c)
    fig.update_xaxes(title_text="mean predicted probability", range=[0, 1])
    fig.update_yaxes(title_text="observed share positive", range=[0, 1.02])
    fig.update_layout(height=380, width=330 * len(markers) + 220, margin=dict(l=50, r=10, t=40, b=50))
    return fig


def plot_site_curves(site_history: pd.DataFrame, metric: str = "dice_WT") -> go.Figure:
    """Per-site learning curves (``history_sites.csv``): one panel per strategy, one line per site, ``metric`` on the
    site's own test cases after each round (local-only: each site model on the whole test split, last round only)."""
    frame = site_history.dropna(subset=[metric]) if metric in site_history else site_history.iloc[0:0]
    strategies = list(dict.fromkeys(frame["strategy"]))
    fig = make_subplots(rows=1, cols=max(len(strategies), 1), subplot_titles=strategies or ["no data"],
                        shared_yaxes=True)
    sites = sorted(frame["site"].unique()) if len(frame) else []
    for c, strategy in enumerate(strategies, start=1):
        for i, site in enumerate(sites):
            group = frame[(frame["strategy"] == strategy) & (frame["site"] == site)].sort_values("round")
            if len(group):
                fig.add_trace(go.Scatter(x=group["round"], y=group[metric], mode="lines+markers", name=site,
                                         legendgroup=site, showlegend=c == 1,
                                         line=dict(color=_PALETTE[i % len(_PALETTE)])), 1, c)
    fig.update_xaxes(title_text="round", dtick=1)
    fig.update_yaxes(range=[0, 1.02], title_text=_METRIC_TITLES.get(metric, metric), col=1)
    fig.update_layout(height=320, width=220 * max(len(strategies), 1) + 160, margin=dict(l=50, r=10, t=40, b=40))
    return fig


def plot_accuracy_vs_bytes(history: pd.DataFrame, metric: str = "dice_WT") -> go.Figure:
    """``metric`` after each round against the bytes sent so far (up and down, all sites), one line per strategy:
    what each strategy buys with what crosses the network. Strategies that send nothing are named in the title."""
    fig = go.Figure()
    silent = []
    for i, (strategy, group) in enumerate(history.groupby("strategy", sort=False)):
        group = group.sort_values("round").dropna(subset=[metric])
        sent = (group["bytes_up"] + group["bytes_down"]).cumsum() / 2**20
        if not len(group):
            continue
        if float(sent.iloc[-1]) == 0:
            silent.append(f"{strategy} {group[metric].iloc[-1]:.2f}")
            continue
        fig.add_trace(go.Scatter(x=sent, y=group[metric], mode="lines+markers", name=strategy,
                                 text=[f"round {r}" for r in group["round"]], line=dict(color=_colour(strategy, i))))
    note = f" (nothing sent: {', '.join(silent)})" if silent else ""
    fig.update_layout(title=dict(text=f"{_METRIC_TITLES.get(metric, metric)} against MiB on the wire{note}",
                                 font=dict(size=13)), xaxis_title="MiB sent so far (up + down, all sites)",
                      yaxis=dict(title=_METRIC_TITLES.get(metric, metric), range=[0, 1.02]), height=380, width=680,
                      margin=dict(l=60, r=10, t=50, b=50))
    return fig


def plot_drift(drift) -> go.Figure:
    """Client drift after one round (:func:`gliofed.experiments.teaching.client_drift`): left, every model's weights
    projected on their two main directions of difference (PCA): the global model the round started from (star), each
    site's model after its local training (dots) and their weighted average, the new global model (diamond); right,
    each site model's distance from the model it started from."""
    from sklearn.decomposition import PCA

    names, vectors = [], []
    for strategy, found in drift.vectors.items():
        for key, vector in found.items():
            names.append((strategy, key))
            vectors.append(vector)
    points = PCA(n_components=2).fit_transform(np.stack(vectors))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                        subplot_titles=["weights after one round (PCA)", "distance from the starting model (L2)"])
    symbols = {"start": "star", "average": "diamond"}
    for i, strategy in enumerate(drift.vectors):
        colour = _colour(strategy, i)
        idx = [j for j, (s, _) in enumerate(names) if s == strategy]
        start = points[next(j for j in idx if names[j][1] == "start")]
        for j in idx:
            key = names[j][1]
            if key not in symbols:  # a site: an arrow from the start
                fig.add_trace(go.Scatter(x=[start[0], points[j, 0]], y=[start[1], points[j, 1]], mode="lines",
                                         line=dict(color=colour, width=1), showlegend=False, hoverinfo="skip"), 1, 1)
        fig.add_trace(go.Scatter(x=points[idx, 0], y=points[idx, 1], mode="markers+text", name=strategy,
                                 text=[names[j][1] for j in idx], textposition="top center", textfont=dict(size=9),
                                 marker=dict(color=colour, size=[16 if names[j][1] in symbols else 9 for j in idx],
                                             symbol=[symbols.get(names[j][1], "circle") for j in idx])), 1, 1)
        part = drift.table[drift.table["strategy"] == strategy]
        fig.add_trace(go.Bar(x=part["site"], y=part["to_start"], name=f"{strategy}: distance", marker_color=colour,
                             showlegend=False), 1, 2)
    fig.update_layout(barmode="group", height=420, width=980, margin=dict(l=40, r=10, t=40, b=60))
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_yaxes(showticklabels=False, row=1, col=1)
    return fig


def plot_synthetic_vs_real(payload, cache_dir: str | Path, subject: str, modalities: Sequence[str] = MODALITIES,
                           contrast: str = "flair", volumes: Sequence[int] | None = None) -> go.Figure:
    """What distillation uploads, beside what it summarises: a real case of the site (full resolution, and
    area-averaged to the upload's grid, as the audit compares them) and every synthetic volume of the site's
    ``distilled_set`` payload, each through its largest lesion cross-section, with its mask below.

    Args:
        payload: a ``distilled_set`` (``syn_images`` (n, C, d, h, w), ``syn_masks`` (n, d, h, w)).
        cache_dir: the cache holding ``subject``.
        subject: a real case of the same site.
        modalities: the payload's channel order (the training config's contrasts).
        contrast: which contrast to show (default FLAIR).
        volumes: which synthetic volumes (indices; default all).
    """
    import torch
    import torch.nn.functional as F

    index = read_index(cache_dir).set_index("subject_id")
    image, seg = load_case(cache_dir, subject, bool(index.loc[subject, "has_mask"]))
    channel = MODALITIES.index(contrast)
    real = np.asarray(image, np.float32)[channel]
    truth = np.asarray(seg) if seg is not None else np.zeros(real.shape, np.uint8)
    synthetic = np.asarray(payload.arrays["syn_images"], np.float32)[:, list(modalities).index(contrast)]
    masks = np.asarray(payload.arrays["syn_masks"])
    grid = synthetic.shape[1:]
    small = F.interpolate(torch.as_tensor(real)[None, None], size=grid, mode="area")[0, 0].numpy()
    small_truth = F.interpolate(torch.as_tensor(truth > 0, dtype=torch.float32)[None, None], size=grid,
                                mode="area")[0, 0].numpy() > 0.5
    panels = [(f"real {subject}", real, truth), ("real, upload grid", small, small_truth.astype(np.uint8))]
    chosen = range(len(synthetic)) if volumes is None else volumes
    panels += [(f"synthetic {i + 1}", synthetic[i], masks[i]) for i in chosen]
    fig = make_subplots(rows=2, cols=len(panels), subplot_titles=[title for title, _, _ in panels],
                        horizontal_spacing=0.01, vertical_spacing=0.04)
    scale = [[i / 3, col] for i, col in enumerate(_SEG_COLOURS)]
    for c, (_, volume, mask) in enumerate(panels, start=1):
        z = largest_tumour_slice(mask)
        z = volume.shape[0] // 2 if z is None else z
        plane = volume[z][::-1, ::-1]  # radiological: the patient's right on the left, anterior up
        low, high = np.percentile(plane, [0.5, 99.5])
        fig.add_trace(go.Heatmap(z=plane, zmin=low, zmax=high, colorscale="gray", showscale=False, hoverinfo="skip"),
                      1, c)
        fig.add_trace(go.Heatmap(z=np.asarray(mask[z])[::-1, ::-1], zmin=0, zmax=3, colorscale=scale,
                                 showscale=False, hoverinfo="skip"), 2, c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    _lock_aspect(fig, 2 * len(panels))
    fig.update_layout(height=420, width=150 * len(panels) + 60, margin=dict(l=10, r=10, t=40, b=10),
                      plot_bgcolor="black")
    fig.update_annotations(font_size=10)
    return fig


def plot_audit(audit: pd.DataFrame, real_to_real: pd.DataFrame) -> go.Figure:
    """The privacy audit's evidence, one panel per site: the real-to-real nearest-neighbour correlations (histogram:
    how alike the site's own patients are), each synthetic volume's nearest-neighbour correlation (ticks, one colour
    per initialisation) and the site's threshold (dashed); a tick at or right of the line is flagged.

    Args:
        audit: :class:`~gliofed.experiments.teaching.DistilledSets` ``.audit``.
        real_to_real: its ``.real_to_real``.
    """
    sites = sorted(audit["site"].unique())
    fig = make_subplots(rows=1, cols=len(sites), subplot_titles=sites, shared_yaxes=True)
    inits = list(dict.fromkeys(audit["init"]))
    colours = {"class_stats": "#1f77b4", "noise": "#2ca02c", "real_unsafe": "#d62728"}
    for c, site in enumerate(sites, start=1):
        real = real_to_real[real_to_real["site"] == site]["nn_corr"]
        fig.add_trace(go.Histogram(x=real, xbins=dict(start=-1, end=1, size=0.1), marker_color="#bbbbbb",
                                   name="real to real", showlegend=c == 1, legendgroup="real"), 1, c)
        part = audit[audit["site"] == site]
        for init in inits:
            values = part[part["init"] == init]["nn_corr"]
            fig.add_trace(go.Scatter(x=values, y=[0.3] * len(values), mode="markers", name=f"synthetic ({init})",
                                     legendgroup=init, showlegend=c == 1,
                                     marker=dict(symbol="line-ns-open", size=18, line=dict(width=3),
                                                 color=colours.get(init, "#9467bd"))), 1, c)
        fig.add_vline(x=float(part["threshold"].iloc[0]), line_dash="dash", line_color="black", row=1, col=c)
    fig.update_xaxes(range=[-0.6, 1.05], title_text="nearest-neighbour correlation")
    fig.update_yaxes(title_text="real cases", col=1)
    fig.update_layout(height=320, width=230 * len(sites) + 160, margin=dict(l=50, r=10, t=40, b=50),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def plot_toy_average(sites: dict, by_hand: dict, name: str = "w:layer.weight") -> go.Figure:
    """The toy FedAvg: each site's weights of one array as a heat map (with its number of cases) and their weighted
    average (computed by hand) on the right, in one colour scale."""
    panels = [(f"{site} (n={n})", arrays[name]) for site, (arrays, n) in sites.items()]
    panels.append(("weighted average", by_hand[name]))
    low = min(float(np.min(v)) for _, v in panels)
    high = max(float(np.max(v)) for _, v in panels)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels], horizontal_spacing=0.04)
    for c, (_, values) in enumerate(panels, start=1):
        values = np.atleast_2d(values)
        fig.add_trace(go.Heatmap(z=values, zmin=low, zmax=high, colorscale="RdBu", showscale=c == len(panels),
                                 text=np.round(values, 2), texttemplate="%{text}"), 1, c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(height=220, width=190 * len(panels) + 80, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def save_html(fig: go.Figure, path: str | Path) -> Path:
    """Write ``fig`` as a standalone HTML file with plotly.js embedded (works offline; no Chrome needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
