import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import compute_dice
from sklearn.metrics import f1_score, roc_auc_score

from gliofed.metrics import (
    classification_metrics,
    expected_calibration_error,
    results_table,
    segmentation_metrics,
)
from tests.fake_predictions import miscalibrated_predictions


def _predictions(n=60, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"subject": [f"s{i}" for i in range(n)], "site": "a", "has_mask": True})
    for marker, k in (("idh", 2), ("codeletion", 2), ("mgmt", 2), ("grade", 3)):
        y = rng.integers(0, k, n)
        y[rng.random(n) < 0.2] = -1
        logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[np.clip(y, 0, None)] * (y >= 0)[:, None]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        df[marker] = y
        for c in range(k):
            df[f"p_{marker}_{c}"] = probs[:, c]
    df["dice_WT"] = rng.random(n)
    df["hd95_WT"] = rng.random(n) * 10
    return df


def _value(table, task, metric):
    return table[(table["task"] == task) & (table["metric"] == metric)].iloc[0]


def test_binary_metrics_match_scikit_learn_and_exclude_unknown():
    df = _predictions()
    table = classification_metrics(df, n_boot=50, seed=1)
    known = df[df["idh"] >= 0]
    row = _value(table, "idh", "AUC")
    assert row["n"] == len(known)
    assert row["value"] == pytest.approx(roc_auc_score(known["idh"], known["p_idh_1"]))
    assert row["ci_low"] <= row["value"] <= row["ci_high"]
    f1 = _value(table, "idh", "F1")["value"]
    assert f1 == pytest.approx(f1_score(known["idh"], (known["p_idh_1"] >= 0.5).astype(int)))


def test_grade_macro_auc_matches_scikit_learn_ovr():
    df = _predictions()
    known = df[df["grade"] >= 0]
    table = classification_metrics(df, n_boot=20)
    expected = roc_auc_score(known["grade"], known[["p_grade_0", "p_grade_1", "p_grade_2"]].to_numpy(),
                             multi_class="ovr", average="macro")
    assert _value(table, "grade", "AUC")["value"] == pytest.approx(expected)
    assert {"grade II", "grade III", "grade IV"} <= set(table["task"])


def test_bootstrap_is_seeded():
    df = _predictions()
    a = classification_metrics(df, n_boot=30, seed=3)
    b = classification_metrics(df, n_boot=30, seed=3)
    c = classification_metrics(df, n_boot=30, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a["ci_low"].equals(c["ci_low"])


def test_ece_of_perfectly_calibrated_and_overconfident_predictions():
    y = np.array([1] * 7 + [0] * 3)
    assert expected_calibration_error(y, np.full(10, 0.7)) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1, 0, 1, 0]), np.array([0.99, 0.99, 0.99, 0.99])) == pytest.approx(0.49)


def test_results_table_has_the_seed_layout():
    table = results_table(classification_metrics(_predictions(), n_boot=20))
    assert list(table.index[:4]) == ["IDH", "1p/19q", "MGMT", "Grade (macro)"]
    assert list(table.columns) == ["n", "AUC", "accuracy", "recall", "specificity", "F1", "threshold"]
    assert "(" in table.loc["IDH", "AUC"]


def test_segmentation_summary_and_dice_agrees_with_monai():
    df = _predictions()
    seg = segmentation_metrics(df)
    row = seg[(seg["region"] == "WT") & (seg["metric"] == "Dice")].iloc[0]
    assert row["median"] == pytest.approx(np.median(df["dice_WT"])) and row["n"] == len(df)
    # the engine's per-case Dice is MONAI's: check the convention for empty masks
    empty = torch.zeros(1, 1, 3, 4, 5)
    assert float(compute_dice(empty, empty, ignore_empty=False)[0, 0]) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_bootstrap_scores_equal_the_scikit_learn_ones(seed):
    from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, recall_score, roc_auc_score

    from gliofed.metrics import binary_scores, expected_calibration_error

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    y = rng.integers(0, 2, n) if seed else np.ones(n, int)  # seed 0: one class only
    p = np.round(rng.random(n), 1)  # rounded: ties
    pred, both = (p >= 0.5).astype(int), len(np.unique(y)) == 2
    reference = {
        "AUC": roc_auc_score(y, p) if both else np.nan,
        "accuracy": accuracy_score(y, pred),
        "recall": recall_score(y, pred, zero_division=0) if (y == 1).any() else np.nan,
        "specificity": recall_score(1 - y, 1 - pred, zero_division=0) if (y == 0).any() else np.nan,
        "F1": f1_score(y, pred, zero_division=0),
        "ECE": expected_calibration_error(y, p),
        "Brier": brier_score_loss(y, p, pos_label=1) if both else np.nan,
    }
    fast = binary_scores(y, p)
    assert fast.keys() == reference.keys()
    for key in fast:
        assert fast[key] == pytest.approx(reference[key], nan_ok=True), key


def test_hd95_is_in_mm_when_the_spacing_is_given():
    import torch

    from gliofed.metrics import region_scores

    truth = torch.zeros(1, 1, 9, 8, 7, dtype=torch.long)
    truth[0, 0, 2:4, 3:5, 2:5] = 2
    predicted = torch.roll(truth, shifts=2, dims=2)  # two slices deeper
    in_voxels = region_scores(predicted, truth)["hd95_WT"]
    in_mm = region_scores(predicted, truth, spacing=(3.0, 1.0, 0.5))["hd95_WT"]
    assert in_voxels == 2.0 and in_mm == 6.0


def test_a_stored_youden_threshold_recovers_the_recall_that_0_5_loses():
    from gliofed.metrics import choose_thresholds

    train, test = miscalibrated_predictions(seed=0, n=80), miscalibrated_predictions(seed=1, n=80)
    fixed = classification_metrics(test, n_boot=0)
    assert _value(fixed, "idh", "recall")["value"] == 0 and _value(fixed, "idh", "AUC")["value"] == 1
    record = choose_thresholds(train)
    assert record["method"] == "youden" and record["split"] == "train" and 0.1 < record["markers"]["idh"] < 0.35
    chosen = classification_metrics(test, n_boot=0, thresholds=record)
    assert _value(chosen, "idh", "recall")["value"] > 0.5
    assert _value(chosen, "idh", "threshold")["value"] == record["markers"]["idh"]
    assert "codeletion" not in record["markers"]  # no known labels: no threshold, 0.5 stays


@pytest.mark.parametrize("method", ["youden", "f1"])
def test_chosen_thresholds_are_the_optimum_of_their_criterion(method):
    from sklearn.metrics import f1_score, roc_curve

    from gliofed.metrics import choose_threshold

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.25 * y + rng.normal(0.3, 0.15, 200), 0, 1)
    t = choose_threshold(y, p, method)
    if method == "youden":
        fpr, tpr, _ = roc_curve(y, p)
        best = (tpr - fpr).max()
        sensitivity = ((p >= t) & (y == 1)).sum() / (y == 1).sum()
        specificity = ((p < t) & (y == 0)).sum() / (y == 0).sum()
        assert sensitivity + specificity - 1 == pytest.approx(best)
    else:
        best = max(f1_score(y, p >= c) for c in np.unique(p))
        assert f1_score(y, p >= t) == pytest.approx(best)


def test_a_marker_with_one_class_gets_no_threshold():
    from gliofed.metrics import choose_threshold

    assert np.isnan(choose_threshold(np.zeros(5), np.linspace(0, 1, 5)))


def test_table3_names_the_threshold_it_used():
    from gliofed.metrics import choose_thresholds, threshold_note

    record = choose_thresholds(miscalibrated_predictions(seed=0, n=80), method="f1")
    table = results_table(classification_metrics(miscalibrated_predictions(seed=1, n=80), n_boot=0, thresholds=record))
    assert table.loc["IDH", "threshold"] == f"{record['markers']['idh']:.2f}"
    assert "(" not in table.loc["IDH", "recall"]  # no bootstrap: the value alone, not "(nan-nan)"
    note = threshold_note(record)
    assert note.startswith("Recall, specificity, F1 and accuracy are at each marker's threshold chosen on the "
                           "train split by the F1-optimal point (idh 0.")
    assert "fixed threshold of 0.5" in threshold_note({})
