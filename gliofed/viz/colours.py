"""The colours every gliofed figure and the viewer use, and a check that they can be told apart.

Ground truth keeps the BraTS convention (red core, green oedema, yellow enhancing) and the prediction is a cyan
outline, so Grad-CAM cannot use a scale that passes through red, green, yellow or cyan (plasma, viridis and jet all
end in yellow). It uses plotly's ``Plotly3``: blue through purple to pink, its lightness rising steadily
(CIELAB L* 23 -> 86), and no colour of it within CIE76 ΔE 75 of any label colour (:func:`palette_separation`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["TRUTH_COLOURS", "PREDICTION_COLOUR", "CAM_COLORSCALE", "MIN_SEPARATION", "colorscale_colours",
           "cielab", "palette_separation"]

#: ground-truth fill per class (1 necrotic/non-enhancing core, 2 oedema, 3 enhancing): the BraTS convention
TRUTH_COLOURS = {1: ("core", "rgb(255,60,60)"), 2: ("oedema", "rgb(60,200,60)"), 3: ("enhancing", "rgb(255,220,0)")}
#: the predicted tumour's outline
PREDICTION_COLOUR = "rgb(0,255,255)"
#: Grad-CAM colour scale: sequential (lightness rises monotonically), and none of the label colours' hues
CAM_COLORSCALE = "Plotly3"
#: the smallest CIE76 ΔE allowed between a label colour and any Grad-CAM colour (ΔE 2-3 is "just noticeable";
#: 40 keeps them apart at a glance)
MIN_SEPARATION = 40.0


def _rgb(colour: str | Sequence[float]) -> np.ndarray:
    """``rgb(...)`` / ``rgba(...)`` / ``#rrggbb`` / a triple -> RGB in [0, 255]."""
    if not isinstance(colour, str):
        return np.asarray(colour, float)[:3]
    text = colour.strip()
    if text.startswith("#"):
        return np.array([int(text[i:i + 2], 16) for i in (1, 3, 5)], float)
    return np.array([float(v) for v in text[text.index("(") + 1:text.index(")")].split(",")[:3]])


def cielab(colour: str | Sequence[float]) -> np.ndarray:
    """CIELAB (D65) coordinates of an sRGB colour."""
    c = _rgb(colour) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def colorscale_colours(colorscale, samples: int = 101) -> list[str]:
    """``samples`` colours along a plotly colour scale (a name such as ``"Plotly3"`` or ``[[0, c0], ..., [1, c1]]``)."""
    from plotly.colors import get_colorscale, sample_colorscale

    scale = get_colorscale(colorscale) if isinstance(colorscale, str) else [list(step) for step in colorscale]
    return sample_colorscale(scale, list(np.linspace(0, 1, samples)))


def palette_separation(colours: Iterable[str], colorscale=CAM_COLORSCALE) -> float:
    """The smallest CIE76 ΔE between any of ``colours`` and any colour of ``colorscale`` (how easily a label can be
    mistaken for a Grad-CAM value; the viewer keeps it above :data:`MIN_SEPARATION`)."""
    scale = np.array([cielab(c) for c in colorscale_colours(colorscale)])
    return float(min(np.linalg.norm(scale - cielab(colour), axis=1).min() for colour in colours))
