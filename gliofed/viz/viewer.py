"""Interactive slice viewer (ipywidgets + plotly ``FigureWidget``) for cases, masks, predictions and Grad-CAM.

Follows nilearn's split: :mod:`gliofed.viz.plots` returns static figures, this module returns widgets.
Without a front end (papermill, ``gliofed notebooks run``, a plain Python shell) displaying a viewer shows
a static figure of its current state instead, so batch runs never fail and their HTML shows a picture.

What a student sees (each point is tested, the last three in a real browser: ``tests/viz/test_browser.py``):

* voxels drawn at their true size (the cache's voxel spacing, or an estimate from its shape), in the radiological
  convention, with R/L, A/P, S/I labels on every edge (:mod:`gliofed.viz.slices`);
* one grey-level window per volume and contrast (robust percentiles over the brain), black outside the brain;
* ground truth filled (red core, green oedema, yellow enhancing), the prediction as a cyan outline, both in a key;
* Grad-CAM in a sequential colour scale (blue-purple-pink, ``Plotly3``) that shares no colour with the labels
  (:mod:`gliofed.viz.colours`), transparent below a threshold, with a colour bar naming the head;
* a title naming case, plane, slice, contrast and overlays; a layout that fits a 1280 px screen;
* a figure that survives a page reload (the widget's saved state is refreshed after every change).

>>> views = case_views(model, CaseDataset(cache, split="test"), max_cases=4)   # doctest: +SKIP
>>> SliceViewer(views)                                                          # doctest: +SKIP
"""

from __future__ import annotations

import html
import os
import sys
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from gliofed.viz.colours import CAM_COLORSCALE, PREDICTION_COLOUR, TRUTH_COLOURS
from gliofed.viz.slices import (
    PLANES,
    brain_mask,
    estimated_spacing,
    intensity_window,
    largest_tumour_slice,
    plane_geometry,
    plane_slice,
    spacing_from_index,
)
from gliofed.vocab import MARKER_CLASSES, MARKERS, MODALITIES

__all__ = ["CaseView", "case_views", "SliceViewer", "PLANES", "frontend_available", "PREDICTION_COLOUR",
           "TRUTH_COLOURS", "CAM_COLORSCALE"]

_SEG_SCALE = [[0.0, "rgba(0,0,0,0)"], [0.17, "rgba(0,0,0,0)"], [0.17, TRUTH_COLOURS[1][1]], [0.5, TRUTH_COLOURS[1][1]],
              [0.5, TRUTH_COLOURS[2][1]], [0.83, TRUTH_COLOURS[2][1]], [0.83, TRUTH_COLOURS[3][1]],
              [1.0, TRUTH_COLOURS[3][1]]]
_CONTRAST_NAMES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
#: figure size in px: with the probability table the viewer is 840 px wide, which fits JupyterLab's notebook on a
#: 1280 px screen with the file browser open (checked in tests/viz/test_browser.py)
_FIGURE_WIDTH, _FIGURE_HEIGHT = 540, 570


@dataclass
class CaseView:
    """Everything the viewer shows for one case. Volumes are (D, H, W) in the cache's RAS grid
    (see :mod:`gliofed.viz.slices`).

    Attributes:
        subject, site: identifiers.
        image: (C, D, H, W) contrasts, named by ``modalities``.
        truth: ground-truth class map (0 background, 1 NCR, 2 oedema, 3 ET) or ``None`` (no mask).
        prediction: predicted class map or ``None``.
        cams: head -> Grad-CAM map in [0, 1].
        probabilities: marker -> predicted class probabilities.
        labels: marker -> true class (-1 unknown).
        spacing: (D, H, W) voxel spacing in mm, or ``None`` when the cache does not record it (the viewer then
            estimates the aspect ratio from the shape: :func:`~gliofed.viz.slices.estimated_spacing`).
    """

    subject: str
    image: np.ndarray
    modalities: Sequence[str] = MODALITIES
    site: str = ""
    truth: np.ndarray | None = None
    prediction: np.ndarray | None = None
    cams: dict[str, np.ndarray] = field(default_factory=dict)
    probabilities: dict[str, list[float]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim != 4 or len(self.modalities) != self.image.shape[0]:
            raise ValueError(f"{self.subject}: image must be (C, D, H, W) with one channel per modality.")
        shape = self.image.shape[1:]
        for name, volume in [("truth", self.truth), ("prediction", self.prediction), *self.cams.items()]:
            if volume is not None and np.shape(volume) != shape:
                raise ValueError(f"{self.subject}: {name} has shape {np.shape(volume)}, the image {shape}.")
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)
            if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
                raise ValueError(f"{self.subject}: spacing must be three positive numbers (D, H, W), "
                                 f"not {self.spacing}.")
        self.brain = brain_mask(self.image)
        self._windows: dict[str, tuple[float, float]] = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])

    @property
    def display_spacing(self) -> tuple[float, float, float]:
        """The recorded spacing, or the estimate from the shape."""
        return self.spacing if self.spacing is not None else estimated_spacing(self.shape)

    def window(self, modality: str) -> tuple[float, float]:
        """Grey-level window of one contrast over the whole volume (computed once)."""
        if modality not in self._windows:
            channel = list(self.modalities).index(modality)
            self._windows[modality] = intensity_window(self.image[channel], self.brain)
        return self._windows[modality]


def case_views(model, dataset, subjects: Sequence[str] | None = None, heads: Sequence[str] = ("seg", *MARKERS),
               layer=None, device: str = "cpu", max_cases: int | None = None) -> list[CaseView]:
    """Run ``model`` and Grad-CAM on cases of a :class:`~gliofed.data.CaseDataset` and package them for the viewer.

    Args:
        subjects: which cases (default: all, in dataset order), cut to ``max_cases``.
        heads: Grad-CAM targets (``"seg"`` and marker heads); each explains the predicted class
            (:func:`gliofed.explain.explain_case`).
        layer: Grad-CAM layer (default per head, see :func:`gliofed.explain.default_layer`).

    Returns:
        one :class:`CaseView` per case, with the voxel spacing where the cache index records it.
    """
    import torch

    from gliofed.engine import resolve_device
    from gliofed.explain import explain_case

    positions = {s: i for i, s in enumerate(dataset.index["subject_id"])}
    wanted = list(subjects) if subjects is not None else list(positions)
    views = []
    device = resolve_device(device) if isinstance(device, str) else device  # "auto" too
    model = model.to(device).eval()
    for subject in wanted[:max_cases]:
        sample = dataset[positions[subject]]
        image = torch.as_tensor(sample["image"])[None].to(device)
        explanation = explain_case(model, image, heads, layer=layer)
        out = explanation.outputs
        views.append(CaseView(
            subject=subject, site=sample["site"], image=sample["image"].numpy(), modalities=dataset.modalities,
            truth=sample["seg"][0].numpy().astype(np.uint8) if sample["has_mask"] else None,
            prediction=out["seg"].argmax(1)[0].cpu().numpy().astype(np.uint8), cams=explanation.cams,
            probabilities={m: torch.softmax(out[m].float(), 1)[0].tolist() for m in MARKERS},
            labels={m: int(v) for m, v in zip(MARKERS, sample["labels"].tolist())},
            spacing=spacing_from_index(dataset.index.iloc[positions[subject]])))
    return views


def frontend_available() -> bool:
    """Whether widgets can be seen: inside an IPython kernel that was not started by papermill / gliofed's batch
    runner. ``GLIOFED_STATIC_VIEWER=1`` forces static output, ``=0`` forces widgets."""
    forced = os.environ.get("GLIOFED_STATIC_VIEWER")
    if forced is not None:
        return forced.strip() in ("0", "false", "no")
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "kernel"):
        return False
    try:  # papermill (or nbclient) launched this kernel: nobody is looking at it
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
    except OSError:
        return True
    return "papermill" not in parent and "nbclient" not in parent


def _outline_field(mask: np.ndarray) -> np.ndarray:
    """A mask padded with one background voxel on every side, so that its 0.5 contour closes along the image's
    edge too (a region touching the edge would otherwise have an open, partly missing outline)."""
    return np.pad(mask.astype(np.float32), 1)


class SliceViewer:
    """Browse cases slice by slice: plane, slice, contrast, overlays (ground truth, prediction, Grad-CAM per head
    above a threshold), opacity, case picker, and the predicted marker probabilities beside the image.

    Args:
        cases: :class:`CaseView` objects (see :func:`case_views`).
        plane: initial plane (``axial``, ``coronal``, ``sagittal``).
        modality: initial contrast (default FLAIR when present).
        cam_threshold: initial Grad-CAM level below which the map is transparent (default 0.3).

    Attributes:
        figure: the ``plotly.graph_objects.FigureWidget``. Traces, bottom to top: image, Grad-CAM, truth,
            prediction outline, then one legend key per truth class and one for the prediction.
        controls: dict of the ipywidgets, by name (``case``, ``plane``, ``slice``, ``modality``, ``truth``,
            ``prediction``, ``cam``, ``cam_threshold``, ``opacity``).
        widget: the assembled ``ipywidgets.VBox``.
    """

    def __init__(self, cases: Sequence[CaseView], plane: str = "axial", modality: str | None = None,
                 cam_threshold: float = 0.3) -> None:
        import ipywidgets as w

        if not cases:
            raise ValueError("SliceViewer needs at least one case.")
        if plane not in PLANES:
            raise ValueError(f"plane must be one of {', '.join(PLANES)}, not {plane!r}.")
        self.cases = {case.subject: case for case in cases}
        first = cases[0]
        heads = list(dict.fromkeys(h for case in cases for h in case.cams))
        modality = modality or ("flair" if "flair" in first.modalities else first.modalities[0])
        label = {"description_width": "72px"}
        self.controls = {
            "case": w.Dropdown(options=list(self.cases), value=first.subject, description="case", style=label,
                               layout=w.Layout(width="280px")),
            "plane": w.ToggleButtons(options=list(PLANES), value=plane, style={"button_width": "84px"}),
            "slice": w.IntSlider(min=0, max=0, value=0, description="slice", continuous_update=True, style=label,
                                 layout=w.Layout(width="420px")),
            "modality": w.Dropdown(options=list(first.modalities), value=modality, description="contrast", style=label,
                                   layout=w.Layout(width="200px")),
            "truth": w.Checkbox(value=True, description="ground truth (filled)", indent=False,
                                layout=w.Layout(width="170px")),
            "prediction": w.Checkbox(value=False, description="prediction (cyan outline)", indent=False,
                                     layout=w.Layout(width="200px")),
            "cam": w.Dropdown(options=["none", *heads], value="none", description="Grad-CAM", style=label,
                              layout=w.Layout(width="200px")),
            "cam_threshold": w.FloatSlider(min=0.0, max=0.95, step=0.05, value=cam_threshold,
                                           description="CAM \u2265", style=label, layout=w.Layout(width="300px")),
            "opacity": w.FloatSlider(min=0.0, max=1.0, step=0.05, value=0.5, description="opacity", style=label,
                                     layout=w.Layout(width="300px")),
        }
        for name, control in self.controls.items():  # stable hooks for the browser test
            control.add_class(f"gliofed-{name.replace('_', '-')}")
        self.probabilities = w.HTML(layout=w.Layout(width="300px", margin="90px 0 0 0"))
        # The live figure, and a plain copy holding the full state: the widget prunes every property the browser
        # reports as plotly.js's default, and a reloaded page then draws without them (see _save_widget_state)
        self._state = self._empty_figure()
        self.figure = go.FigureWidget(self._state)
        for kept, live in zip(self._state.data, self.figure.data):
            kept.uid = live.uid
        self.figure.add_class("gliofed-figure")
        self._resetting = False
        self._reset_slider()
        for name, control in self.controls.items():
            control.observe(self._on_case if name in ("case", "plane") else self._on_change, names="value")
        self._redraw()
        row = {"align_items": "center"}
        self.widget = w.VBox([
            w.HBox([self.controls["case"], self.controls["modality"]], layout=w.Layout(**row)),
            w.HBox([w.Label("plane", layout=w.Layout(width="72px", margin="0 4px 0 2px",
                                                     display="flex", justify_content="flex-end")),
                    self.controls["plane"]], layout=w.Layout(**row)),
            self.controls["slice"],
            w.HBox([self.controls["truth"], self.controls["prediction"], self.controls["cam"]],
                   layout=w.Layout(**row, margin="0 0 0 76px")),
            w.HBox([self.controls["cam_threshold"], self.controls["opacity"]], layout=w.Layout(**row)),
            w.HBox([self.figure, self.probabilities], layout=w.Layout(margin="10px 0 0 0")),
        ])
        self.widget.add_class("gliofed-viewer")

    # state ----------------------------------------------------------------------------------------------------
    @property
    def case(self) -> CaseView:
        return self.cases[self.controls["case"].value]

    def current_slice(self) -> dict[str, np.ndarray | None]:
        """The 2D planes on display: ``image``, ``truth``, ``prediction`` (tumour mask), ``cam`` (raw map);
        ``None`` when hidden."""
        case, plane, index = self.case, self.controls["plane"].value, self.controls["slice"].value
        channel = list(case.modalities).index(self.controls["modality"].value)
        cam = self.controls["cam"].value
        show_truth = self.controls["truth"].value and case.truth is not None
        show_prediction = self.controls["prediction"].value and case.prediction is not None
        return {
            "image": plane_slice(case.image[channel], plane, index),
            "truth": plane_slice(case.truth, plane, index) if show_truth else None,
            "prediction": plane_slice(case.prediction > 0, plane, index) if show_prediction else None,
            "cam": plane_slice(case.cams[cam], plane, index) if cam in case.cams else None,
        }

    def title(self) -> str:
        """Case and site; plane, slice, contrast and the overlays on display (and a note when the aspect ratio is
        estimated)."""
        case, controls = self.case, self.controls
        site = f" ({case.site})" if case.site else ""
        planes = self.current_slice()
        overlays = [name for name, key in (("ground truth", "truth"), ("prediction", "prediction"))
                    if planes[key] is not None]
        if planes["cam"] is not None:
            overlays.append(f"Grad-CAM {controls['cam'].value} \u2265 {controls['cam_threshold'].value:.2f}")
        plane, index = controls["plane"].value, controls["slice"].value
        last = case.shape[PLANES[plane]] - 1
        contrast = _CONTRAST_NAMES.get(controls["modality"].value, controls["modality"].value)
        note = ("" if case.spacing is not None else "<br><span style='font-size:11px;color:#777'>"
                                                    "aspect estimated: the cache records no voxel spacing</span>")
        return (f"<b>{html.escape(case.subject)}</b>{html.escape(site)} \u00b7 {plane} slice {index} of 0\u2013{last}"
                f"<br>{contrast} \u00b7 overlays: {', '.join(overlays) if overlays else 'none'}{note}")

    # figure ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _empty_figure() -> go.Figure:
        """Traces and fixed layout; :meth:`_redraw` fills in the data."""
        hidden = dict(x=[None], y=[None], hoverinfo="skip", showlegend=True, visible=False)
        keys = [go.Scatter(name=f"truth: {name}", mode="markers", **hidden,
                           marker=dict(symbol="square", size=12, color=colour))
                for name, colour in TRUTH_COLOURS.values()]
        keys.append(go.Scatter(name="prediction", mode="lines", line=dict(color=PREDICTION_COLOUR, width=3),
                               **hidden))
        figure = go.Figure([
            go.Heatmap(name="image", colorscale="gray", showscale=False, hoverinfo="skip", zsmooth=False),
            go.Heatmap(name="cam", colorscale=CAM_COLORSCALE, zmax=1, hoverinfo="skip", showscale=False,
                       colorbar=dict(thickness=14, len=0.75, x=1.05, xanchor="left", title=dict(side="right"))),
            go.Heatmap(name="truth", colorscale=_SEG_SCALE, zmin=0, zmax=3, showscale=False, hoverinfo="skip"),
            # coloring="lines" takes the line colour from the colour scale and ignores line.color: a constant scale
            # is what makes the outline cyan
            go.Contour(name="prediction", showscale=False, hoverinfo="skip",
                       contours=dict(start=0.5, end=0.5, size=1, coloring="lines"),
                       colorscale=[[0, PREDICTION_COLOUR], [1, PREDICTION_COLOUR]], line=dict(width=2.5)),
            *keys,
        ])
        axis = dict(visible=False, showgrid=False, zeroline=False, constrain="domain", fixedrange=False)
        figure.update_xaxes(**axis)
        figure.update_yaxes(**axis, scaleanchor="x", scaleratio=1)
        figure.update_layout(
            width=_FIGURE_WIDTH, height=_FIGURE_HEIGHT, margin=dict(l=28, r=90, t=96, b=44),
            plot_bgcolor="black", paper_bgcolor="white", template="simple_white",
            title=dict(x=0.02, xanchor="left", y=1, yanchor="top", yref="container", pad=dict(t=10),
                       font=dict(size=14)),
            legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.04, yanchor="top", itemclick=False,
                        itemdoubleclick=False, font=dict(size=12)),
        )
        return figure

    def _redraw(self) -> None:
        with self.figure.batch_update():
            self._draw(self.figure)
        self._draw(self._state)
        self._save_widget_state()
        self.probabilities.value = self._probability_table()

    def _draw(self, figure: go.Figure) -> None:
        """Put the current view into ``figure`` (the live widget or the full-state copy)."""
        case, controls = self.case, self.controls
        planes = self.current_slice()
        plane = controls["plane"].value
        geometry = plane_geometry(case.shape, case.display_spacing, plane)
        position = dict(x0=geometry.x0, dx=geometry.dx, y0=geometry.y0, dy=geometry.dy)
        low, high = case.window(controls["modality"].value)
        image_plane = np.where(plane_slice(case.brain, plane, controls["slice"].value), planes["image"], np.nan)
        opacity, threshold = controls["opacity"].value, controls["cam_threshold"].value
        image, cam, truth, prediction, *keys = figure.data
        image.update(z=image_plane.astype(np.float32), zmin=low, zmax=high, **position)
        if planes["cam"] is not None:
            above = np.where(planes["cam"] >= threshold, planes["cam"], np.nan).astype(np.float32)
            cam.update(z=above, zmin=threshold, zmax=1, visible=True, showscale=True, opacity=opacity,
                       colorbar=dict(title=dict(text=f"Grad-CAM {controls['cam'].value}")), **position)
        else:
            cam.update(z=None, visible=False, showscale=False)
        truth.update(z=planes["truth"], visible=planes["truth"] is not None, opacity=opacity, **position)
        if planes["prediction"] is not None:
            prediction.update(z=_outline_field(planes["prediction"]), visible=True, x0=geometry.x0 - geometry.dx,
                              dx=geometry.dx, y0=geometry.y0 - geometry.dy, dy=geometry.dy)
        else:
            prediction.update(z=None, visible=False)
        for key, shown in zip(keys, [planes["truth"] is not None] * 3 + [planes["prediction"] is not None]):
            key.visible = shown
        figure.update_xaxes(range=list(geometry.x_range))
        figure.update_yaxes(range=list(geometry.y_range))
        figure.layout.annotations = self._orientation_labels(geometry.labels)
        figure.layout.title.text = self.title()

    @staticmethod
    def _orientation_labels(labels: tuple[str, str, str, str]) -> list[dict]:
        """Patient directions at the image's edges (outside the image, so they hide no anatomy)."""
        style = dict(xref="x domain", yref="y domain", showarrow=False, font=dict(size=15, color="#222"))
        left, right, bottom, top = labels
        return [
            dict(text=left, x=0, y=0.5, xanchor="right", xshift=-4, **style),
            dict(text=right, x=1, y=0.5, xanchor="left", xshift=4, **style),
            dict(text=bottom, x=0.5, y=0, yanchor="top", yshift=-2, **style),
            dict(text=top, x=0.5, y=1, yanchor="bottom", yshift=2, **style),
        ]

    def _save_widget_state(self) -> None:
        """Refresh the state a reloaded page draws from.

        ``FigureWidget`` sends every edit to the browser as a restyle/relayout message, but refreshes the state a
        reloaded page receives (``_widget_data`` / ``_widget_layout``) only when the figure itself is displayed; inside
        a VBox it never is, so a reload drew the empty figure of construction time. Its own ``data`` cannot be copied
        either: it drops every property the browser reports back as a plotly.js default (``showscale=False``,
        hidden axes, the locked aspect ratio), and a fresh plot without them gets colour bars, axes and a stretched
        brain. So the full state comes from the plain copy. These are private plotly attributes;
        ``tests/viz/test_viewer.py`` fails if plotly renames them.
        """
        self.figure._widget_data = deepcopy(self._state._data)
        self.figure._widget_layout = deepcopy(self._state._layout_obj._props)

    # callbacks ------------------------------------------------------------------------------------------------
    def _reset_slider(self) -> None:
        case, plane = self.case, self.controls["plane"].value
        size = case.shape[PLANES[plane]]
        volume = case.truth if case.truth is not None else case.prediction
        start = largest_tumour_slice(volume, plane)  # the largest tumour cross-section, else the middle
        slider = self.controls["slice"]
        self._resetting = True  # the caller redraws once, after the reset
        try:
            with slider.hold_trait_notifications():
                slider.max = size - 1
                slider.value = size // 2 if start is None else start
        finally:
            self._resetting = False

    def _on_case(self, _change=None) -> None:
        case = self.case
        modality = self.controls["modality"]
        if list(modality.options) != list(case.modalities):
            self._resetting = True
            try:
                modality.options = list(case.modalities)
            finally:
                self._resetting = False
        self._reset_slider()
        self._redraw()

    def _on_change(self, _change=None) -> None:
        if not self._resetting:
            self._redraw()

    def _probability_table(self) -> str:
        case = self.case
        rows = []
        for marker in MARKERS:
            probs = case.probabilities.get(marker)
            if probs is None:
                continue
            names = MARKER_CLASSES[marker]
            best = int(np.argmax(probs))
            truth = case.labels.get(marker, -1)
            rows.append(f"<tr><td><b>{marker}</b></td><td>{html.escape(str(names[best]))}</td><td>{probs[best]:.2f}</td>"
                        f"<td>{html.escape(str(names[truth])) if truth >= 0 else 'unknown'}</td></tr>")
        cell = "padding:2px 4px;text-align:left"
        return (f"<table style='font-size:12px;border-collapse:collapse'><tr><th style='{cell}'>marker</th>"
                f"<th style='{cell}'>predicted</th><th style='{cell}' title='probability of the predicted class'>p</th>"
                f"<th style='{cell}'>truth</th></tr>"
                + "".join(rows).replace("<td>", f"<td style='{cell}'>") + "</table>")

    # display --------------------------------------------------------------------------------------------------
    def static_figure(self) -> go.Figure:
        """A plain ``go.Figure`` of the current view, the probabilities in its title (for papermill and HTML)."""
        figure = go.Figure(self._state)
        case = self.case
        summary = ", ".join(f"{m} {MARKER_CLASSES[m][int(np.argmax(p))]} {max(p):.2f}"
                            for m, p in case.probabilities.items())
        figure.update_layout(title_text=f"{figure.layout.title.text}<br><sup>{summary}</sup>", margin=dict(t=116),
                             height=_FIGURE_HEIGHT + 20)
        return figure

    def show(self, interactive: bool | None = None):
        """Display the widget, or the static figure when no front end is attached (``interactive=None`` detects)."""
        from IPython.display import display

        interactive = frontend_available() if interactive is None else interactive
        if interactive:
            display(self.widget)
        else:
            print("no interactive front end (batch run): showing a static view; open the notebook in JupyterLab "
                  "to browse.")
            display(self.static_figure())

    def _ipython_display_(self) -> None:
        self.show()
