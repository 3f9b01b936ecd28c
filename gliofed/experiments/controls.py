"""Controls for the strategy comparison: what a benchmark's CNNs must beat before their marker AUCs mean anything.

* **Summary-statistics probe** (:func:`case_summaries`, :func:`probe_predictions`): a logistic regression per
  marker on per-case tumour summaries computed, given the true masks, by exactly the function with which a
  distillation site summarises its cases before painting them into its synthetic volumes
  (:func:`gliofed.federated.site.condense.init.case_statistics`): per tissue class (background, core, oedema,
  enhancing) and contrast the voxel mean and spread (32 numbers), the four class fractions and the tumour centre
  (3): 39 features (``features="summary"``), or the 16 means alone (``features="means"``). Per case, not per
  group of ``min_group`` cases: an upper bound on what those summaries can tell. If the probe matches a CNN, the
  cohort cannot tell condensation from its initialisation.
* **Site-only baseline** (:func:`site_only_predictions`): a logistic regression per marker on the site alone
  (one-hot): what a model can score by recognising the hospital.

Both are trained on the training split's known (manifest) labels, pooled over sites, and return test predictions
in the format of :func:`gliofed.engine.predict` (``subject``, ``site``, ``model``, ``has_mask``, the manifest
labels, ``p_<marker>_<k>``; Dice columns NaN: neither segments), so that the benchmark scores them like a CNN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gliofed.vocab import MARKER_CLASSES, MARKERS, MODALITIES

__all__ = ["FEATURE_SETS", "case_summaries", "feature_columns", "probe_predictions", "site_only_predictions"]

#: tissue classes of the cache's masks, in order
_CLASSES = ("background", "core", "oedema", "enhancing")

#: the probe's feature sets
FEATURE_SETS = ("summary", "means")


def feature_columns(features: str = "summary", modalities=MODALITIES) -> list[str]:
    """Names of the probe's feature columns: ``summary`` (per class and contrast mean and spread, class fractions,
    tumour centre; 39 for four contrasts) or ``means`` (the per class and contrast means: 16).

    Raises:
        ValueError: an unknown feature set."""
    if features not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {features!r}; choose one of {', '.join(FEATURE_SETS)}.")
    means = [f"mean_{k}_{m}" for k in _CLASSES for m in modalities]
    if features == "means":
        return means
    spreads = [f"sd_{k}_{m}" for k in _CLASSES for m in modalities]
    return means + spreads + [f"fraction_{k}" for k in _CLASSES] + ["centre_d", "centre_h", "centre_w"]


def case_summaries(cache_dir: str | Path, split: str | None = None) -> pd.DataFrame:
    """One row per case of ``cache_dir`` (``split``: ``"train"``, ``"test"`` or None for all): ``subject``,
    ``site``, ``split``, ``has_mask``, the manifest labels and the summary features (:func:`feature_columns`),
    computed from the cached image and its true mask by the distillation site's own summary function. A case
    without a mask, or a class a case lacks, has NaN features (a probe imputes them)."""
    from gliofed.data.dataset import CaseDataset
    from gliofed.federated.site.condense.init import case_statistics

    dataset = CaseDataset(cache_dir, split=split)
    modalities = dataset.modalities
    columns = feature_columns("summary", modalities)
    rows = []
    for i in range(len(dataset)):
        entry = dataset.index.iloc[i]
        row = {"subject": entry["subject_id"], "site": entry["site"], "split": entry["split"],
               "has_mask": bool(entry["has_mask"]), **{m: int(entry[m]) for m in MARKERS}}
        summary = case_statistics(dataset, [i])
        values = dict.fromkeys(columns, float("nan"))
        if summary:
            stats = summary[0]["stats"].numpy()  # (4 classes, C, 2)
            for k, cls in enumerate(_CLASSES):
                for c, modality in enumerate(modalities):
                    values[f"mean_{cls}_{modality}"] = float(stats[k, c, 0])
                    values[f"sd_{cls}_{modality}"] = float(stats[k, c, 1])
                values[f"fraction_{cls}"] = float(summary[0]["fractions"][k])
            for axis, value in zip(("d", "h", "w"), summary[0]["centre"]):
                values[f"centre_{axis}"] = float(value)
        rows.append({**row, **values})
    return pd.DataFrame(rows)


def _classifier(seed: int):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # median imputation, then standardised features; L2 at scikit-learn's default strength (C = 1)
    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                         LogisticRegression(C=1.0, max_iter=5000, random_state=seed))


def _fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """(n_test, classes) probabilities of a logistic regression fitted on the known labels; the training
    prevalence where fewer than two classes are known (a classifier has nothing to separate)."""
    known = train_y >= 0
    x, y = train_x[known], train_y[known]
    out = np.zeros((len(test_x), classes))
    if len(np.unique(y)) < 2:
        prior = np.bincount(y, minlength=classes) / max(len(y), 1) if len(y) else np.full(classes, 1 / classes)
        return out + prior
    model = _classifier(seed).fit(x, y)
    out[:, model.classes_] = model.predict_proba(test_x)
    return out


def _frame(test: pd.DataFrame, probabilities: dict[str, np.ndarray], name: str) -> pd.DataFrame:
    frame = test[["subject", "site", "has_mask", *MARKERS]].copy().reset_index(drop=True)
    frame.insert(2, "model", name)
    for marker in MARKERS:
        for k in range(len(MARKER_CLASSES[marker])):
            frame[f"p_{marker}_{k}"] = probabilities[marker][:, k]
    for region in ("WT", "TC", "ET"):
        frame[f"dice_{region}"] = float("nan")
    return frame


def probe_predictions(train: pd.DataFrame, test: pd.DataFrame, features: str = "summary",
                      seed: int = 0) -> pd.DataFrame:
    """Test predictions of the summary-statistics probe: one logistic regression per marker (grade: multinomial)
    on :func:`case_summaries` rows, fitted on the training cases with a mask and a known label.

    Args:
        train, test: :func:`case_summaries` frames (the test frame's labels are carried through, not used).
        features: ``"summary"`` (39 features) or ``"means"`` (16).
        seed: the classifier's random state.
    """
    columns = feature_columns(features)
    fit_rows = train[train["has_mask"].astype(bool)]
    probabilities = {m: _fit_predict(fit_rows[columns].to_numpy(float), fit_rows[m].to_numpy(int),
                                     test[columns].to_numpy(float), len(MARKER_CLASSES[m]), seed) for m in MARKERS}
    return _frame(test, probabilities, f"probe_{features}")


def site_only_predictions(train: pd.DataFrame, test: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Test predictions from the site alone: one logistic regression per marker on a one-hot site code, fitted on
    every training case with a known label (a site never seen in training gets the pooled prevalence)."""
    sites = sorted(set(train["site"]) | set(test["site"]))

    def one_hot(frame: pd.DataFrame) -> np.ndarray:
        return (frame["site"].to_numpy()[:, None] == np.array(sites)[None]).astype(float)

    probabilities = {m: _fit_predict(one_hot(train), train[m].to_numpy(int), one_hot(test),
                                     len(MARKER_CLASSES[m]), seed) for m in MARKERS}
    return _frame(test, probabilities, "site_only")
