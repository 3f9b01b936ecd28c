"""Geometry shared by the static plots and the slice viewer: planes of a cache volume, the largest tumour slice,
voxel spacing, orientation labels and a robust intensity window.

The cache grid. :mod:`gliofed.data.transforms` orients every case to RAS+ with MONAI's ``Orientationd`` (nibabel's
convention: the first array axis increases towards the patient's Right, the second towards Anterior, the third
towards Superior) and then permutes (C, x, y, z) to (C, D, H, W) = (C, z, y, x). So in a (D, H, W) volume

* D (axis 0) increases towards **S**uperior (it is the axial slice index),
* H (axis 1) increases towards **A**nterior,
* W (axis 2) increases towards the patient's **R**ight.

Display convention: **radiological**, as ITK-SNAP and 3D Slicer show axial and coronal slices by default: the
patient's right is on the left of the screen (you look at the patient from the feet, or face to face); superior and
anterior are up; the sagittal view has anterior on the left. Every view is labelled with the four directions, so
nobody has to remember this paragraph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PLANES", "SPACING_COLUMNS", "PlaneGeometry", "plane_slice", "largest_tumour_slice", "estimated_spacing",
           "spacing_from_index", "plane_geometry", "brain_mask", "intensity_window"]

#: plane name -> axis of a (D, H, W) volume that the slice index moves along
PLANES: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}
#: per-case voxel spacing of the cache grid in mm, (D, H, W) order, as columns of the cache index (when present)
SPACING_COLUMNS = ("spacing_d", "spacing_h", "spacing_w")

# Screen directions of each plane's 2D slice. A slice keeps the two other axes in order, (rows, columns):
# axial (H, W), coronal (D, W), sagittal (D, H). Rows grow upwards (plotly's heatmap y axis): A or S is up.
# Columns are drawn with the x axis reversed (radiological): W (towards R) puts R on the left, H (towards A) puts A
# on the left of the sagittal view. Labels: (left, right, bottom, top) edge of the image.
_LABELS: dict[str, tuple[str, str, str, str]] = {
    "axial": ("R", "L", "P", "A"),
    "coronal": ("R", "L", "I", "S"),
    "sagittal": ("A", "P", "I", "S"),
}


def _plane_axis(plane: str) -> int:
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}, not {plane!r}.")
    return PLANES[plane]


def plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice ``index`` of a (D, H, W) volume: axial (H, W), coronal (D, W), sagittal (D, H)."""
    return np.take(np.asarray(volume), index, axis=_plane_axis(plane))


def largest_tumour_slice(mask: np.ndarray | None, plane: str = "axial") -> int | None:
    """The slice of ``plane`` with the largest tumour cross-section (most voxels > 0), ``None`` without tumour.

    Args:
        mask: (D, H, W) class map or boolean mask, or ``None``.
        plane: ``axial``, ``coronal`` or ``sagittal``.
    """
    if mask is None:
        return None
    tumour = np.asarray(mask) > 0
    if not tumour.any():
        return None
    axis = _plane_axis(plane)
    return int(np.argmax(tumour.sum(axis=tuple(a for a in range(3) if a != axis))))


def estimated_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Relative voxel spacing when the cache does not record it.

    The cache crops each scan to the brain and resamples it in-plane to a square, keeping the slice count, so the
    crop's physical extent is about the same along all three axes (a brain is roughly as tall as it is long and
    wide). Spacing is then inversely proportional to the voxel count: ``(n / D, n / H, n / W)`` with ``n`` the
    largest of the three, in arbitrary units. This fixes the 2 to 3.5 x squash of thick-slice views; the true
    spacing (:data:`SPACING_COLUMNS`) is used whenever the cache has it.

    Args:
        shape: (D, H, W).
    """
    depth, height, width = (int(n) for n in shape)
    largest = max(depth, height, width)
    return largest / depth, largest / height, largest / width


def spacing_from_index(row: Mapping) -> tuple[float, float, float] | None:
    """The (D, H, W) voxel spacing in mm from a cache index row, or ``None`` where the index has no (valid) spacing
    (caches written before spacing was recorded)."""
    try:
        values = tuple(float(row[column]) for column in SPACING_COLUMNS)
    except (KeyError, TypeError, ValueError):
        return None
    return values if all(np.isfinite(v) and v > 0 for v in values) else None


@dataclass(frozen=True)
class PlaneGeometry:
    """Where a 2D slice sits on screen, in mm (or the estimate's units).

    Attributes:
        x0, dx, y0, dy: position of the first column / row and the spacing (plotly's heatmap ``x0``/``dx``...).
        x_range: x axis range, reversed (radiological display: see the module docstring).
        y_range: y axis range.
        labels: patient direction at the (left, right, bottom, top) edge of the image.
    """

    x0: float
    dx: float
    y0: float
    dy: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    labels: tuple[str, str, str, str]

    @property
    def aspect(self) -> float:
        """Width / height of the drawn image."""
        return abs(self.x_range[1] - self.x_range[0]) / abs(self.y_range[1] - self.y_range[0])


def plane_geometry(shape: Sequence[int], spacing: Sequence[float], plane: str) -> PlaneGeometry:
    """Screen geometry of ``plane`` for a (D, H, W) volume of ``shape`` with voxel ``spacing`` (D, H, W).

    Columns become x and rows y (see :func:`plane_slice`), each voxel as large as its spacing, so the picture keeps
    the true aspect ratio; the x axis runs right to left (radiological display).
    """
    axis = _plane_axis(plane)
    rows, columns = [a for a in range(3) if a != axis]
    dy, dx = float(spacing[rows]), float(spacing[columns])
    width, height = shape[columns] * dx, shape[rows] * dy
    return PlaneGeometry(x0=0.0, dx=dx, y0=0.0, dy=dy, x_range=(width - dx / 2, -dx / 2),
                         y_range=(-dy / 2, height - dy / 2), labels=_LABELS[plane])


def brain_mask(image: np.ndarray) -> np.ndarray:
    """(D, H, W) brain voxels of a (C, D, H, W) cache image: the cache is skull-stripped and cropped, with zero
    background that z-scoring leaves at zero, so the brain is wherever any contrast is non-zero."""
    return np.any(np.asarray(image) != 0, axis=0)


def intensity_window(volume: np.ndarray, brain: np.ndarray | None = None,
                     percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """A robust grey-level window for a whole volume: the given percentiles of its brain voxels.

    One window per volume and contrast keeps the brightness of a tissue the same on every slice (windowing each
    slice on its own made the background flip between mid-grey and white).

    Args:
        volume: (D, H, W) one contrast.
        brain: voxels to use (default: the non-zero ones).
        percentiles: low and high percentile (default 0.5 and 99.5: a few hot voxels do not darken the rest).

    Returns:
        (low, high), with high > low.
    """
    volume = np.asarray(volume, dtype=np.float32)
    values = volume[brain] if brain is not None else volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, percentiles))
    return (low, high) if high > low else (low, low + 1.0)
