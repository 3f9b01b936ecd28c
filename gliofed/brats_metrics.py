"""The BraTS challenges' segmentation scores, as the official ``brats-evaluation`` package (0.0.10, built on
``panoptica`` 2.1) computes them for adult glioma (its ``gli`` configuration), on class maps in the scan's own grid.

Per region (WT, TC, ET):

- **Dice** and **HD95** of the whole region (panoptica's ``global_bin_dsc`` / ``global_bin_hd95``). HD95 is the 95th
  percentile of the pooled border-to-border distances of both directions, in mm (the scan's voxel spacing).
- **Lesions**: the connected components (26-connectivity) of reference and prediction, matched one-to-one by
  maximum total Dice (a pair needs any overlap); ``tp`` matched, ``fn`` missed reference lesions, ``fp`` spurious
  predicted ones, and ``f1`` = 2 tp / (2 tp + fp + fn) (panoptica's recognition quality).
- **Lesion-wise Dice and HD95**: the mean Dice and HD95 over matched lesions (panoptica's ``sq_dsc`` /
  ``sq_hd95``, the package's ``lesionwise_dsc_mean`` / ``lesionwise_hd95_mean``).

Penalties, as the package applies them: when nothing overlaps (a missed region, a spurious one, or prediction and
reference apart), Dice is 0 and HD95 is :data:`HD95_PENALTY_MM` (373 mm, "the diameter of the cube in SRI space";
the BraTS 2023-2024 scripts used 374); the lesion-wise scores get the same 0 / 373 when no lesion is matched (the
package leaves that lesion-wise HD95 infinite; gliofed writes its 373 penalty so that summaries stay finite). A
region absent from both reference and prediction scores NaN (left out of the summaries, as the package does).
A missed lesion next to a found one lowers ``f1``, not the lesion-wise Dice: report both.

Tested against values computed by ``brats-evaluation`` 0.0.10 itself on fixtures with a missed and a spurious
lesion (``tests/data/brats_evaluation_reference.json``, made by ``benchmarks/brats_evaluation_reference.py``): equal
on 1 mm isotropic grids (every BraTS release). On an anisotropic grid gliofed's distances are in mm along the right
axes; the package measures the whole-region HD95 in voxels and pairs the lesions' voxel spacing with the axes in
reverse order (it reads NIfTI through SimpleITK, whose arrays are z, y, x), which the test shows. The package is not
a dependency: it pins pandas < 3 and numpy < 2.3.

>>> import numpy as np
>>> truth = np.zeros((9, 8, 7), np.uint8); truth[2:5, 2:5, 2:5] = 3
>>> brats_scores(truth, truth, (1.0, 1.0, 1.0))["dice_ET"]
1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from gliofed.vocab import REGIONS

__all__ = ["HD95_PENALTY_MM", "SCORE_NAMES", "brats_scores", "region_brats_scores", "hd95", "dice"]

#: HD95 (mm) of a missed or spurious region or lesion in brats-evaluation 0.0.10
HD95_PENALTY_MM = 373.0
#: the per-region scores :func:`region_brats_scores` returns, in column order
SCORE_NAMES = ("dice", "hd95", "lesion_dice", "lesion_hd95", "lesions", "tp", "fp", "fn", "f1")
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks (NaN when both are empty)."""
    total = int(prediction.sum()) + int(reference.sum())
    return float(2.0 * np.logical_and(prediction, reference).sum() / total) if total else float("nan")


def _border(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` with a face neighbour outside it (6-connectivity erosion; outside the array counts
    as outside)."""
    return mask ^ ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the distances (mm) from each border voxel of one mask to the nearest border voxel of the
    other, both directions pooled (panoptica's HD95). Both masks must be non-empty."""
    spacing = np.asarray(spacing, dtype=np.float64)
    box = tuple(slice(s.start, s.stop) for s in ndimage.find_objects((prediction | reference).astype(np.uint8))[0])
    # distances between voxels inside the union's bounding box (padded by one) equal those of the full grid
    box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
    pred_border, ref_border = _border(prediction)[box], _border(reference)[box]
    to_pred = ndimage.distance_transform_edt(~pred_border, sampling=spacing)[ref_border]
    to_ref = ndimage.distance_transform_edt(~ref_border, sampling=spacing)[pred_border]
    return float(np.percentile(np.hstack((to_pred, to_ref)), 95))


def _lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=_CONNECTIVITY_26)


def _match(pred_labels: np.ndarray, n_pred: int, ref_labels: np.ndarray, n_ref: int) -> list[tuple[int, int, float]]:
    """One-to-one matching of lesions maximising the summed Dice (pairs without overlap cannot match).

    Returns:
        ``(reference lesion, predicted lesion, Dice)`` per matched pair.
    """
    if n_pred == 0 or n_ref == 0:
        return []
    both = (pred_labels > 0) & (ref_labels > 0)
    pairs, overlap = np.unique(np.stack([ref_labels[both], pred_labels[both]]), axis=1, return_counts=True)
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    cost = np.full((n_ref, n_pred), 1.0 + 1e-6)
    scores = {}
    for (r, p), count in zip(pairs.T, overlap):
        score = 2.0 * count / (ref_sizes[r] + pred_sizes[p])
        scores[(int(r), int(p))] = score
        if score >= 1e-6:
            cost[r - 1, p - 1] = 1.0 - score
    rows, cols = linear_sum_assignment(cost)
    return [(int(r) + 1, int(p) + 1, scores[(int(r) + 1, int(p) + 1)]) for r, p in zip(rows, cols) if cost[r, p] < 1.0]


def region_brats_scores(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """The BraTS scores of one region (see the module docstring).

    Args:
        prediction, reference: boolean masks of the region, same shape (the scan's grid).
        spacing: voxel size in mm along the masks' axes.

    Returns:
        ``dice``, ``hd95`` (mm), ``lesion_dice``, ``lesion_hd95`` (mm), ``lesions`` (reference lesions), ``tp``,
        ``fp``, ``fn``, ``f1`` (:data:`SCORE_NAMES`).
    """
    prediction, reference = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    pred_labels, n_pred = _lesions(prediction)
    ref_labels, n_ref = _lesions(reference)
    matches = _match(pred_labels, n_pred, ref_labels, n_ref)
    tp = len(matches)
    out = {"lesions": float(n_ref), "tp": float(tp), "fp": float(n_pred - tp), "fn": float(n_ref - tp)}
    empty = n_pred + n_ref == 0
    out["f1"] = (float("nan") if empty else 0.0) if tp == 0 else tp / (tp + 0.5 * (n_pred - tp) + 0.5 * (n_ref - tp))
    if empty:
        out.update(dice=float("nan"), hd95=float("nan"), lesion_dice=float("nan"), lesion_hd95=float("nan"))
    elif not np.logical_and(prediction, reference).any():
        out.update(dice=0.0, hd95=HD95_PENALTY_MM)
    else:
        out.update(dice=dice(prediction, reference), hd95=hd95(prediction, reference, spacing))
    if not empty and tp == 0:
        out.update(lesion_dice=0.0, lesion_hd95=HD95_PENALTY_MM)
    elif tp:
        distances = [hd95(pred_labels == p, ref_labels == r, spacing) for r, p, _ in matches]
        out.update(lesion_dice=float(np.mean([d for _, _, d in matches])), lesion_hd95=float(np.mean(distances)))
    return {name: out[name] for name in SCORE_NAMES}


def brats_scores(predicted: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """The BraTS scores of one case for every region (:data:`gliofed.vocab.REGIONS`: WT, TC, ET).

    Args:
        predicted, truth: in-memory class maps (0 background, 1 core, 2 oedema, 3 enhancing), same shape.
        spacing: voxel size in mm along their axes.

    Returns:
        ``<score>_<region>`` for every score of :data:`SCORE_NAMES`, e.g. ``dice_WT``, ``lesion_hd95_ET``, ``f1_TC``.
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction shape {predicted.shape} differs from the reference's {truth.shape}")
    row = {}
    for region, classes in REGIONS.items():
        scores = region_brats_scores(np.isin(predicted, classes), np.isin(truth, classes), spacing)
        row.update({f"{name}_{region}": value for name, value in scores.items()})
    return row
