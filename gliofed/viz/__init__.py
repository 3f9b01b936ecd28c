"""Figures: static plotly figures (:mod:`gliofed.viz.plots`) and interactive widgets (:mod:`gliofed.viz.viewer`)."""

from __future__ import annotations

__all__ = ["setup_plotly"]


def setup_plotly() -> None:
    """Render plotly figures both live (JupyterLab) and as embedded HTML, so that papermill runs and their
    HTML export show every figure offline (plotly.js is embedded, no CDN)."""
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook"
