"""Interactive slice viewer (ipywidgets + plotly ``FigureWidget``) for cases, masks, predictions and Grad-CAM.

Follows nilearn's split: :mod:`gliofed.viz.plots` returns static figures, this module returns widgets.
Without a front end (papermill, ``gliofed notebooks run``, a plain Python shell) displaying a viewer shows
a static figure of its current state instead, so batch runs never fail and their HTML shows a picture.

>>> views = case_views(model, CaseDataset(cache, split="test"), max_cases=4)   # doctest: +SKIP
>>> SliceViewer(views)                                                          # doctest: +SKIP
"""

from __future__ import annotations

import html
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from gliofed.data.manifest import MARKER_CLASSES, MARKERS, MODALITIES

__all__ = ["CaseView", "case_views", "SliceViewer", "PLANES", "frontend_available"]

#: plane name -> axis of a (D, H, W) volume that the slider moves along
PLANES: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}
_SEG_SCALE = [[0.0, "rgba(0,0,0,0)"], [0.17, "rgba(0,0,0,0)"], [0.17, "rgba(255,60,60,1)"], [0.5, "rgba(255,60,60,1)"],
              [0.5, "rgba(60,200,60,1)"], [0.83, "rgba(60,200,60,1)"], [0.83, "rgba(255,220,0,1)"],
              [1.0, "rgba(255,220,0,1)"]]


@dataclass
class CaseView:
    """Everything the viewer shows for one case. Volumes are (D, H, W) in the cache's RAS grid.

    Attributes:
        subject, site: identifiers.
        image: (C, D, H, W) contrasts, named by ``modalities``.
        truth: ground-truth class map (0 background, 1 NCR, 2 oedema, 3 ET) or ``None`` (no mask).
        prediction: predicted class map or ``None``.
        cams: head -> Grad-CAM map in [0, 1].
        probabilities: marker -> predicted class probabilities.
        labels: marker -> true class (-1 unknown).
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

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        shape = self.image.shape[1:]
        if self.image.ndim != 4 or len(self.modalities) != self.image.shape[0]:
            raise ValueError(f"{self.subject}: image must be (C, D, H, W) with one channel per modality.")
        for name, volume in [("truth", self.truth), ("prediction", self.prediction), *self.cams.items()]:
            if volume is not None and np.shape(volume) != shape:
                raise ValueError(f"{self.subject}: {name} has shape {np.shape(volume)}, the image {shape}.")


def case_views(model, dataset, subjects: Sequence[str] | None = None, heads: Sequence[str] = ("seg", *MARKERS),
               layer=None, device: str = "cpu", max_cases: int | None = None) -> list[CaseView]:
    """Run ``model`` and Grad-CAM on cases of a :class:`~gliofed.data.CaseDataset` and package them for the viewer.

    Args:
        subjects: which cases (default: all, in dataset order), cut to ``max_cases``.
        heads: Grad-CAM targets (``"seg"`` and marker heads); each explains the predicted class.
    """
    import torch

    from gliofed.explain import SEG_TARGET, grad_cam

    positions = {s: i for i, s in enumerate(dataset.index["subject_id"])}
    wanted = list(subjects) if subjects is not None else list(positions)
    views = []
    model = model.to(device).eval()
    for subject in wanted[:max_cases]:
        sample = dataset[positions[subject]]
        image = torch.as_tensor(sample["image"])[None].to(device)
        with torch.no_grad():
            out = model(image)
        cams = {}
        for head in heads:
            target_class = None if head == SEG_TARGET else int(out[head].argmax(1)[0])
            cams[head] = grad_cam(model, image, head, target_class, layer=layer)[0, 0].cpu().numpy()
        views.append(CaseView(
            subject=subject, site=sample["site"], image=sample["image"].numpy(), modalities=dataset.modalities,
            truth=sample["seg"][0].numpy().astype(np.uint8) if sample["has_mask"] else None,
            prediction=out["seg"].argmax(1)[0].cpu().numpy().astype(np.uint8), cams=cams,
            probabilities={m: torch.softmax(out[m].float(), 1)[0].tolist() for m in MARKERS},
            labels={m: int(v) for m, v in zip(MARKERS, sample["labels"].tolist())}))
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


def _plane(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    return np.take(volume, index, axis=PLANES[plane])


class SliceViewer:
    """Browse cases slice by slice: plane, slice, contrast, overlays (ground truth, prediction, Grad-CAM per head),
    opacity, case picker, and the predicted marker probabilities beside the image.

    Args:
        cases: :class:`CaseView` objects (see :func:`case_views`).
        plane: initial plane (``axial``, ``coronal``, ``sagittal``).
        modality: initial contrast (default FLAIR when present).

    Attributes:
        figure: the ``plotly.graph_objects.FigureWidget`` (traces: image, truth, prediction, Grad-CAM).
        controls: dict of the ipywidgets, by name (``case``, ``plane``, ``slice``, ``modality``, ``truth``,
            ``prediction``, ``cam``, ``opacity``).
        widget: the assembled ``ipywidgets.VBox``.
    """

    def __init__(self, cases: Sequence[CaseView], plane: str = "axial", modality: str | None = None) -> None:
        import ipywidgets as w

        if not cases:
            raise ValueError("SliceViewer needs at least one case.")
        if plane not in PLANES:
            raise ValueError(f"plane must be one of {', '.join(PLANES)}, not {plane!r}.")
        self.cases = {case.subject: case for case in cases}
        first = cases[0]
        heads = list(dict.fromkeys(h for case in cases for h in case.cams))
        modality = modality or ("flair" if "flair" in first.modalities else first.modalities[0])
        self.controls = {
            "case": w.Dropdown(options=list(self.cases), value=first.subject, description="case"),
            "plane": w.ToggleButtons(options=list(PLANES), value=plane, description="plane"),
            "slice": w.IntSlider(min=0, max=0, value=0, description="slice", continuous_update=True),
            "modality": w.Dropdown(options=list(first.modalities), value=modality, description="contrast"),
            "truth": w.Checkbox(value=True, description="ground truth"),
            "prediction": w.Checkbox(value=False, description="prediction"),
            "cam": w.Dropdown(options=["none", *heads], value="none", description="Grad-CAM"),
            "opacity": w.FloatSlider(min=0.0, max=1.0, step=0.05, value=0.5, description="opacity"),
        }
        self.probabilities = w.HTML()
        self.figure = go.FigureWidget([
            go.Heatmap(name="image", colorscale="gray", showscale=False, hoverinfo="skip"),
            go.Heatmap(name="truth", colorscale=_SEG_SCALE, zmin=0, zmax=3, showscale=False, hoverinfo="skip"),
            go.Contour(name="prediction", showscale=False, contours=dict(start=0.5, end=0.5, coloring="lines"),
                       line=dict(color="cyan", width=2), hoverinfo="skip"),
            go.Heatmap(name="cam", colorscale="Jet", zmin=0, zmax=1, showscale=False, hoverinfo="skip"),
        ])
        self.figure.update_xaxes(visible=False)
        self.figure.update_yaxes(visible=False, scaleanchor="x")
        self.figure.update_layout(width=520, height=520, margin=dict(l=5, r=5, t=30, b=5))
        self._reset_slider()
        for name, control in self.controls.items():
            control.observe(self._on_case if name in ("case", "plane") else self._on_change, names="value")
        self._redraw()
        left = w.VBox([self.controls[k] for k in ("case", "plane", "slice", "modality")])
        right = w.VBox([self.controls[k] for k in ("truth", "prediction", "cam", "opacity")])
        self.widget = w.VBox([w.HBox([left, right]), w.HBox([self.figure, self.probabilities])])

    # state ----------------------------------------------------------------------------------------------------
    @property
    def case(self) -> CaseView:
        return self.cases[self.controls["case"].value]

    def current_slice(self) -> dict[str, np.ndarray | None]:
        """The 2D planes on display: ``image``, ``truth``, ``prediction``, ``cam`` (``None`` when hidden)."""
        case, plane, index = self.case, self.controls["plane"].value, self.controls["slice"].value
        channel = list(case.modalities).index(self.controls["modality"].value)
        cam = self.controls["cam"].value
        return {
            "image": _plane(case.image[channel], plane, index),
            "truth": _plane(case.truth, plane, index) if self.controls["truth"].value and case.truth is not None else None,
            "prediction": (_plane((case.prediction > 0).astype(np.uint8), plane, index)
                           if self.controls["prediction"].value and case.prediction is not None else None),
            "cam": _plane(case.cams[cam], plane, index) if cam in case.cams else None,
        }

    # callbacks ------------------------------------------------------------------------------------------------
    def _reset_slider(self) -> None:
        case, plane = self.case, self.controls["plane"].value
        size = case.image.shape[1 + PLANES[plane]]
        volume = case.truth if case.truth is not None else case.prediction
        if volume is not None and np.any(volume > 0):  # start at the largest tumour cross-section
            other = tuple(a for a in range(3) if a != PLANES[plane])
            start = int(np.argmax((volume > 0).sum(other)))
        else:
            start = size // 2
        slider = self.controls["slice"]
        slider.max = size - 1
        slider.value = start

    def _on_case(self, _change=None) -> None:
        case = self.case
        modality = self.controls["modality"]
        if list(modality.options) != list(case.modalities):
            modality.options = list(case.modalities)
        self._reset_slider()
        self._redraw()

    def _on_change(self, _change=None) -> None:
        self._redraw()

    def _redraw(self) -> None:
        planes = self.current_slice()
        opacity = self.controls["opacity"].value
        with self.figure.batch_update():
            image, truth, prediction, cam = self.figure.data
            image.z = planes["image"]
            truth.z, truth.visible, truth.opacity = planes["truth"], planes["truth"] is not None, opacity
            prediction.z, prediction.visible = planes["prediction"], planes["prediction"] is not None
            cam.z, cam.visible, cam.opacity = planes["cam"], planes["cam"] is not None, opacity
            site = f" ({self.case.site})" if self.case.site else ""
            self.figure.layout.title = (f"{self.case.subject}{site} · {self.controls['plane'].value} "
                                        f"{self.controls['slice'].value}")
        self.probabilities.value = self._probability_table()

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
        return ("<table><tr><th>marker</th><th>predicted</th><th>p</th><th>truth</th></tr>" + "".join(rows)
                + "</table>")

    # display --------------------------------------------------------------------------------------------------
    def static_figure(self) -> go.Figure:
        """A plain ``go.Figure`` of the current view, the probabilities in its title (for papermill and HTML)."""
        figure = go.Figure(self.figure)
        case = self.case
        summary = ", ".join(f"{m} {MARKER_CLASSES[m][int(np.argmax(p))]} {max(p):.2f}"
                            for m, p in case.probabilities.items())
        figure.update_layout(title=f"{figure.layout.title.text}<br><sup>{summary}</sup>", margin=dict(t=60))
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
