"""BraTS-comparable segmentation scores: a model's masks scored against the reference masks in each scan's own grid.

Every case goes through ``gliofed predict``'s own path (:meth:`gliofed.inference.Predictor.predict_case`: the
training preprocessing, the model, and MONAI's inverse of every spatial step back to the scan's grid); its reference
mask is read in its dataset's label convention; :func:`gliofed.brats_metrics.brats_scores` scores the pair with the
scan's voxel spacing. Scores on the preprocessed cache grid (:func:`gliofed.engine.predict`) are only a quick metric:
they are resampled, cropped and not comparable with published BraTS results.

>>> table = native_scores(Predictor("runs/central"), cases)   # doctest: +SKIP
>>> summarise_native(table)                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gliofed.brats_metrics import SCORE_NAMES, brats_scores
from gliofed.errors import DataError
from gliofed.vocab import REGIONS

__all__ = ["native_scores", "summarise_native", "NATIVE_METRICS"]

#: the per-region scores summarised, with their names in tables
NATIVE_METRICS = {"dice": "Dice", "hd95": "HD95 (mm)", "lesion_dice": "lesion-wise Dice",
                  "lesion_hd95": "lesion-wise HD95 (mm)", "f1": "lesion detection F1"}


def _reference(case: dict) -> tuple[np.ndarray, tuple[float, ...]]:
    """The case's reference mask as in-memory classes, and its voxel spacing (mm)."""
    import nibabel as nib

    from gliofed.data.conventions import convention

    subject, path = case["subject_id"], Path(case["seg"])
    try:
        image = nib.load(str(path))
        labels = np.asanyarray(image.dataobj)
    except Exception as error:  # noqa: BLE001 - one sentence naming the file
        raise DataError(f"subject {subject}: reference mask {path.name} cannot be read ({type(error).__name__}).") \
            from error
    rules = convention(case.get("label_convention"))
    classes = rules.decode(labels, where=f"subject {subject}: {path.name}")
    return classes, tuple(float(z) for z in image.header.get_zooms()[:3])


def native_scores(predictor, cases: Sequence[dict], progress: bool = True) -> pd.DataFrame:
    """Predict each case in its scan's grid and score it against its reference mask.

    Args:
        predictor: a :class:`gliofed.inference.Predictor` (its post-processing applies).
        cases: dicts with ``subject_id``, ``site``, the contrast paths, ``seg`` (the reference mask) and
            ``label_convention`` (blank: ``brats``).
        progress: show a progress bar.

    Returns:
        one row per case: ``subject``, ``site`` and ``<score>_<region>`` for every score of
        :data:`gliofed.brats_metrics.SCORE_NAMES` and region (WT, TC, ET); HD95 in mm.

    Raises:
        DataError: a reference mask that is unreadable, holds labels outside its convention, or has another shape
            than the scan the prediction returned to.
    """
    from tqdm.auto import tqdm

    rows = []
    for case in tqdm(cases, desc="score in scan grid", unit="case", disable=not progress):
        subject = str(case["subject_id"])
        result = predictor.predict_case(subject, case)
        truth, spacing = _reference(case)
        if truth.shape != result["labels"].shape:
            raise DataError(f"subject {subject}: reference mask shape {truth.shape} differs from the scans' "
                            f"{result['labels'].shape}.")
        rows.append({"subject": subject, "site": case.get("site", ""),
                     **brats_scores(result["labels"], truth, spacing)})
    columns = ["subject", "site", *(f"{s}_{r}" for s in SCORE_NAMES for r in REGIONS)]
    return pd.DataFrame(rows, columns=columns)


def summarise_native(table: pd.DataFrame) -> pd.DataFrame:
    """Median, IQR, mean and n (cases with a finite score) per region and metric of :func:`native_scores`' table;
    a region absent from both a case's reference and prediction (NaN) is left out, as brats-evaluation does.

    Returns:
        columns ``region``, ``metric`` (:data:`NATIVE_METRICS` names), ``median``, ``q1``, ``q3``, ``mean``, ``n``.
    """
    rows = []
    for score, name in NATIVE_METRICS.items():
        for region in REGIONS:
            column = f"{score}_{region}"
            values = table[column].to_numpy(dtype=float) if column in table else np.array([])
            values = values[np.isfinite(values)]
            q1, median, q3 = np.percentile(values, [25, 50, 75]) if len(values) else (np.nan,) * 3
            rows.append({"region": region, "metric": name, "median": float(median), "q1": float(q1),
                         "q3": float(q3), "mean": float(values.mean()) if len(values) else np.nan, "n": len(values)})
    return pd.DataFrame(rows, columns=["region", "metric", "median", "q1", "q3", "mean", "n"])
