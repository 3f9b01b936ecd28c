"""Classification and segmentation metrics with seeded bootstrap 95 % CIs, in the seed's Table 3 layout.

Input is the per-case prediction table of :func:`gliofed.engine.predict`. Unknown labels (-1) are
excluded and the number of cases used is reported with every row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from gliofed.vocab import MARKER_CLASSES, MARKERS, REGIONS

__all__ = ["region_scores", "binary_scores", "classification_metrics", "segmentation_metrics",
           "expected_calibration_error", "hd95_label", "evaluate_predictions", "results_table", "quick_metrics",
           "per_site_metrics", "choose_threshold", "choose_thresholds", "threshold_values", "threshold_note",
           "THRESHOLD_METHODS", "BINARY_MARKERS"]

_BINARY = ("idh", "codeletion", "mgmt")
#: the markers with one decision threshold each (grade is a three-class argmax)
BINARY_MARKERS = _BINARY
#: how a threshold can be chosen on the training split
THRESHOLD_METHODS = {"youden": "Youden's J", "f1": "the F1-optimal point"}
#: the threshold every marker without a stored one uses
DEFAULT_THRESHOLD = 0.5


def region_scores(predicted, truth, hd95: bool = True, spacing=None) -> dict[str, float]:
    """Dice and HD95 per region (:data:`REGIONS`) of one case with MONAI's metrics.

    Args:
        predicted, truth: class maps as tensors of shape (1, 1, D, H, W) on one device.
        hd95: compute the 95th-percentile Hausdorff distances (slower); else NaN.
        spacing: voxel size in mm along (D, H, W); HD95 is then in mm (as BraTS reports it), else in voxels.

    Returns:
        ``dice_WT/TC/ET`` and ``hd95_WT/TC/ET`` (mm with ``spacing``, else voxels; NaN where prediction or truth of
        a region is empty).
    """
    import warnings

    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    row = {}
    for region, classes in REGIONS.items():
        pred_r = torch.isin(predicted, torch.tensor(classes, device=predicted.device)).float()
        true_r = torch.isin(truth, torch.tensor(classes, device=truth.device)).float()
        row[f"dice_{region}"] = float(compute_dice(pred_r, true_r, include_background=True, ignore_empty=False)[0, 0])
        row[f"hd95_{region}"] = float("nan")
        if hd95 and pred_r.sum() > 0 and true_r.sum() > 0:
            with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
                distance = compute_hausdorff_distance(pred_r, true_r, include_background=True, percentile=95,
                                                      spacing=None if spacing is None else [float(s) for s in spacing])
                row[f"hd95_{region}"] = float(distance[0, 0])
    return row


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, bins: int = 10) -> float:
    """ECE of binary probabilities: bin-weighted |accuracy - confidence| over ``bins`` equal-width bins."""
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    predicted = (prob >= 0.5).astype(int)
    confidence = np.where(predicted == 1, prob, 1 - prob)
    edges = np.linspace(0.5, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence >= lo) & ((confidence < hi) if hi < 1.0 else (confidence <= hi))
        if in_bin.any():
            ece += in_bin.mean() * abs((predicted[in_bin] == y_true[in_bin]).mean() - confidence[in_bin].mean())
    return float(ece)


def fast_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) identity, ties averaged: equals scikit-learn's, without its input
    validation (the bootstrap calls it thousands of times)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.nan
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def choose_threshold(y: np.ndarray, p: np.ndarray, method: str = "youden") -> float:
    """The decision threshold of one binary marker chosen on labelled predictions (the training split).

    Args:
        y: true labels (0/1).
        p: predicted probabilities of class 1.
        method: ``"youden"`` (default): the ROC point maximising Youden's J = sensitivity + specificity - 1
            (scikit-learn's ``roc_curve``); ``"f1"``: the point maximising F1 (``precision_recall_curve``). Ties go to
            the highest threshold.

    Returns:
        the threshold t (a case is called positive when p >= t), or NaN when ``y`` lacks one of the classes.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method {method!r} is not one of {', '.join(THRESHOLD_METHODS)}.")
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    if len(np.unique(y)) < 2:
        return float("nan")
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(y, p)
        j = (tpr - fpr)[1:]  # the first point (threshold +inf) calls nobody positive
        return float(min(thresholds[1:][int(np.argmax(j))], 1.0))
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=precision + recall > 0)
    best = np.flatnonzero(f1 == f1.max())
    return float(thresholds[best[-1]])


def choose_thresholds(predictions: pd.DataFrame, method: str = "youden", split: str = "train") -> dict:
    """Each binary marker's threshold chosen on ``predictions`` (:func:`choose_threshold`, unknown labels left out),
    as the record a checkpoint stores.

    Args:
        predictions: a :func:`gliofed.engine.predict` table of the cases the threshold is chosen on.
        method: ``"youden"`` (default) or ``"f1"``.
        split: what the cases are, recorded for the reader (default ``"train"``).

    Returns:
        ``{"method", "split", "markers": {marker: threshold}, "n": {marker: cases used}}``; a marker whose known
        labels lack a class has no threshold (it keeps 0.5).
    """
    markers, counts = {}, {}
    for marker in _BINARY:
        known = predictions[predictions[marker] >= 0]
        value = choose_threshold(known[marker].to_numpy(), known[f"p_{marker}_1"].to_numpy(), method)
        counts[marker] = int(len(known))
        if np.isfinite(value):
            markers[marker] = value
    return {"method": method, "split": split, "markers": markers, "n": counts}


def threshold_values(record: dict | None) -> dict[str, float]:
    """marker -> threshold for every binary marker: the stored ones (a :func:`choose_thresholds` record, or a plain
    ``{marker: value}``), 0.5 for the rest."""
    record = record or {}
    stored = record.get("markers", record) if isinstance(record, dict) else {}
    return {marker: float(stored[marker]) if isinstance(stored.get(marker), int | float) else DEFAULT_THRESHOLD
            for marker in _BINARY}


def threshold_note(record: dict | None) -> str:
    """One sentence saying at which thresholds recall, specificity, F1 and accuracy are reported."""
    record = record or {}
    chosen = sorted(record.get("markers", {}))
    if not chosen:
        return "Recall, specificity, F1 and accuracy are at a fixed threshold of 0.5 (no threshold was stored)."
    method = THRESHOLD_METHODS.get(record.get("method"), str(record.get("method")))
    rest = [m for m in _BINARY if m not in chosen]
    values = ", ".join(f"{m} {record['markers'][m]:.2f}" for m in chosen)
    return (f"Recall, specificity, F1 and accuracy are at each marker's threshold chosen on the {record.get('split')} "
            f"split by {method} ({values})"
            + (f"; {', '.join(rest)} at 0.5 (one class, or none, among its training labels)" if rest else "")
            + "; grade by the most likely "
            "class.")


def binary_scores(y: np.ndarray, p: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """AUC, accuracy, recall, specificity, F1, ECE and Brier of binary labels ``y`` and probabilities ``p``, in plain
    NumPy (equal to scikit-learn's, tested) because the bootstrap calls it thousands of times. Accuracy, recall,
    specificity and F1 call a case positive when ``p >= threshold`` (default 0.5)."""
    y = np.asarray(y).astype(int)
    pred = (p >= threshold).astype(int)
    tp, tn = int(((pred == 1) & (y == 1)).sum()), int(((pred == 0) & (y == 0)).sum())
    fp, fn = int(((pred == 1) & (y == 0)).sum()), int(((pred == 0) & (y == 1)).sum())
    both = tp + fn > 0 and tn + fp > 0
    return {
        "AUC": fast_auc(y, p),
        "accuracy": (tp + tn) / len(y),
        "recall": tp / (tp + fn) if tp + fn else np.nan,
        "specificity": tn / (tn + fp) if tn + fp else np.nan,
        "F1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0,
        "ECE": expected_calibration_error(y, p),
        "Brier": float(np.mean((p - y) ** 2)) if both else np.nan,
    }


def _bootstrap(y: np.ndarray, p: np.ndarray, score: Callable, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        for key, value in score(y[idx], p[idx]).items():
            draws.setdefault(key, []).append(value)
    if not draws:  # n_boot = 0: no bootstrap, no intervals
        return {key: (np.nan, np.nan) for key in score(y, p)}
    cis = {}
    for key, values in draws.items():
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        cis[key] = ((float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if len(values)
                    else (np.nan, np.nan))
    return cis


def classification_metrics(predictions: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                           thresholds: dict | None = None) -> pd.DataFrame:
    """Per binary marker (IDH, 1p/19q, MGMT): AUC, accuracy, recall, specificity, F1, ECE, Brier with
    bootstrap 95 % CIs, and the ``threshold`` the threshold metrics used; grade: macro one-vs-rest AUC plus one
    one-vs-rest row per grade (II, III, IV).

    Args:
        predictions: a :func:`gliofed.engine.predict` table.
        n_boot: bootstrap resamples (0: no intervals).
        seed: seeds the bootstrap.
        thresholds: the model's stored thresholds (:func:`choose_thresholds` record or ``{marker: value}``); a
            marker without one uses 0.5.

    Returns:
        long table: ``task``, ``metric``, ``value``, ``ci_low``, ``ci_high``, ``n`` (cases with a known label).
    """
    from functools import partial

    cutoffs = threshold_values(thresholds)
    rows = []
    for marker in MARKERS:
        known = predictions[predictions[marker] >= 0]
        y = known[marker].to_numpy()
        n_classes = len(MARKER_CLASSES[marker])
        probs = known[[f"p_{marker}_{k}" for k in range(n_classes)]].to_numpy()
        if marker in _BINARY:
            tasks = {marker: (y, probs[:, 1])}
        else:  # grade: one-vs-rest per class
            tasks = {f"grade {name}": ((y == k).astype(int), probs[:, k])
                     for k, name in enumerate(MARKER_CLASSES[marker])}
        for task, (yt, pt) in tasks.items():
            if len(yt) == 0:
                continue
            score = partial(binary_scores, threshold=cutoffs.get(task, DEFAULT_THRESHOLD))
            values = score(yt, pt)
            cis = _bootstrap(yt, pt, score, n_boot, seed)
            for metric, value in values.items():
                rows.append({"task": task, "metric": metric, "value": float(value), "ci_low": cis[metric][0],
                             "ci_high": cis[metric][1], "n": len(yt)})
            if task in cutoffs:
                rows.append({"task": task, "metric": "threshold", "value": cutoffs[task], "ci_low": np.nan,
                             "ci_high": np.nan, "n": len(yt)})
        if marker == "grade" and len(y) and len(np.unique(y)) > 1:
            present = np.unique(y)

            def macro(yb: np.ndarray, pb: np.ndarray, present: np.ndarray = present) -> dict[str, float]:
                aucs = [fast_auc(yb == k, pb[:, k]) for k in present if 0 < (yb == k).sum() < len(yb)]
                return {"AUC": float(np.mean(aucs)) if aucs else np.nan}

            value = macro(y, probs)["AUC"]
            ci = _bootstrap(y, probs, macro, n_boot, seed)["AUC"]
            rows.append({"task": "grade", "metric": "AUC", "value": value, "ci_low": ci[0], "ci_high": ci[1],
                         "n": len(y)})
    return pd.DataFrame(rows, columns=["task", "metric", "value", "ci_low", "ci_high", "n"])


def hd95_label(predictions: pd.DataFrame) -> str:
    """``"HD95 (mm)"`` when every scored case knew its voxel spacing (column ``hd95_unit``), else ``"HD95 (voxels)"``:
    a table never mixes the two."""
    masked = predictions[predictions["has_mask"].astype(bool)] if "has_mask" in predictions else predictions
    masked = masked if len(masked) else predictions  # no mask at all: the unit the scores would have had
    units = set(masked["hd95_unit"]) if "hd95_unit" in masked and len(masked) else {"voxels"}
    return "HD95 (mm)" if units == {"mm"} else "HD95 (voxels)"


def segmentation_metrics(predictions: pd.DataFrame) -> pd.DataFrame:
    """Dice and HD95 per region (WT, TC, ET) over cases with a mask: median, IQR, mean and n. HD95 is labelled
    with its unit (:func:`hd95_label`)."""
    rows = []
    masked = predictions[predictions["has_mask"].astype(bool)]
    hd95_name = hd95_label(predictions)
    for metric in ("dice", "hd95"):
        for region in ("WT", "TC", "ET"):
            column = f"{metric}_{region}"
            if column not in masked:
                continue
            values = masked[column].dropna().to_numpy()
            q1, median, q3 = (np.percentile(values, [25, 50, 75]) if len(values) else (np.nan,) * 3)
            rows.append({"region": region, "metric": "Dice" if metric == "dice" else hd95_name,
                         "median": median, "q1": q1, "q3": q3, "mean": float(values.mean()) if len(values) else np.nan,
                         "n": len(values)})
    return pd.DataFrame(rows)


def evaluate_predictions(predictions: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                         thresholds: dict | None = None) -> dict[str, pd.DataFrame]:
    """Both tables: ``{"classification": ..., "segmentation": ...}``; ``thresholds``: see
    :func:`classification_metrics`."""
    return {"classification": classification_metrics(predictions, n_boot, seed, thresholds),
            "segmentation": segmentation_metrics(predictions)}


def results_table(classification: pd.DataFrame) -> pd.DataFrame:
    """The seed's Table 3 layout: one row per task (IDH, 1p/19q, MGMT, grade, grade II/III/IV), columns
    AUC, accuracy, recall, specificity, F1 as ``value (low-high)`` strings, n, and the ``threshold`` the binary
    markers' accuracy, recall, specificity and F1 were computed at (:func:`threshold_note` says how it was chosen)."""
    names = {"idh": "IDH", "codeletion": "1p/19q", "mgmt": "MGMT", "grade": "Grade (macro)"}
    order = ["idh", "codeletion", "mgmt", "grade", "grade II", "grade III", "grade IV"]
    rows = []
    for task in order:
        part = classification[classification["task"] == task]
        if part.empty:
            continue
        row = {"task": names.get(task, task.replace("grade", "Grade")), "n": int(part["n"].iloc[0])}
        for metric in ("AUC", "accuracy", "recall", "specificity", "F1"):
            hit = part[part["metric"] == metric]
            if hit.empty or not np.isfinite(hit["value"].iloc[0]):
                row[metric] = ""
            elif not np.isfinite(hit["ci_low"].iloc[0]):  # no bootstrap (n_boot=0): the value alone
                row[metric] = f"{hit['value'].iloc[0]:.2f}"
            else:
                row[metric] = f"{hit['value'].iloc[0]:.2f} ({hit['ci_low'].iloc[0]:.2f}-{hit['ci_high'].iloc[0]:.2f})"
        cutoff = part[part["metric"] == "threshold"]
        row["threshold"] = f"{cutoff['value'].iloc[0]:.2f}" if len(cutoff) else ""
        rows.append(row)
    # a segmentation-only cohort has no marker labels: an empty table, not a KeyError
    return pd.DataFrame(rows, columns=["task", "n", "AUC", "accuracy", "recall", "specificity", "F1",
                                       "threshold"]).set_index("task")


def quick_metrics(predictions: pd.DataFrame) -> dict[str, float]:
    """Per-round summary without bootstrap: median Dice per region, AUC per binary marker, grade macro AUC."""
    out: dict[str, float] = {}
    masked = predictions[predictions["has_mask"]] if len(predictions) else predictions
    for region in ("WT", "TC", "ET"):
        out[f"dice_{region}"] = float(masked[f"dice_{region}"].median()) if len(masked) else float("nan")
    for marker in MARKERS:
        known = predictions[predictions[marker] >= 0]
        y = known[marker].to_numpy()
        if len(np.unique(y)) < 2:
            out[f"auc_{marker}"] = float("nan")
        elif marker == "grade":
            present = [k for k in range(3) if 0 < (y == k).sum() < len(y)]
            out["auc_grade"] = float(np.mean([roc_auc_score(y == k, known[f"p_grade_{k}"]) for k in present]))
        else:
            out[f"auc_{marker}"] = float(roc_auc_score(y, known[f"p_{marker}_1"]))
    return out


def per_site_metrics(predictions: pd.DataFrame) -> pd.DataFrame:
    """:func:`quick_metrics` per site (rows) plus the number of cases; NaN where a site cannot be scored."""
    rows = [{"site": site, "n": len(group), **quick_metrics(group)} for site, group in predictions.groupby("site")]
    return pd.DataFrame(rows).set_index("site")
