"""gliofed.experiments.controls: the summary-statistics probe and the site-only baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gliofed.experiments import controls
from gliofed.metrics import fast_auc
from gliofed.vocab import MARKERS


def _summaries(n: int, seed: int, informative: bool, sites=("a", "b")) -> pd.DataFrame:
    """Fake case summaries: IDH shifts the core's FLAIR mean when ``informative``, every other feature is noise."""
    rng = np.random.default_rng(seed)
    columns = controls.feature_columns("summary")
    frame = pd.DataFrame(rng.standard_normal((n, len(columns))), columns=columns)
    frame.insert(0, "subject", [f"s{seed}_{i:03d}" for i in range(n)])
    frame.insert(1, "site", [sites[i % len(sites)] for i in range(n)])
    frame.insert(2, "has_mask", True)
    for marker in MARKERS:
        frame[marker] = rng.integers(0, 3 if marker == "grade" else 2, n)
    if informative:
        frame["mean_core_flair"] += 2.5 * frame["idh"]
    return frame


def test_feature_sets_are_the_39_summaries_and_the_16_means():
    assert len(controls.feature_columns("summary")) == 39 and len(controls.feature_columns("means")) == 16
    assert set(controls.feature_columns("means")) < set(controls.feature_columns("summary"))
    with pytest.raises(ValueError, match="unknown feature set"):
        controls.feature_columns("voxels")


def test_case_summaries_are_the_distillation_sites_own_per_case_statistics(tiny_cache):
    from gliofed.data.dataset import CaseDataset
    from gliofed.federated.site.condense.init import case_statistics

    table = controls.case_summaries(tiny_cache, split="train")
    dataset = CaseDataset(tiny_cache, split="train")
    assert list(table["subject"]) == list(dataset.index["subject_id"])
    i = int(np.flatnonzero(table["has_mask"].to_numpy())[0])
    reference = case_statistics(dataset, [i])[0]
    row = table.iloc[i]
    assert row["mean_oedema_t2"] == pytest.approx(float(reference["stats"][2, 2, 0]))
    assert row["sd_background_t1"] == pytest.approx(float(reference["stats"][0, 0, 1]))
    assert row["fraction_enhancing"] == pytest.approx(float(reference["fractions"][3]))
    assert row["centre_h"] == pytest.approx(float(reference["centre"][1]))
    unmasked = table[~table["has_mask"].astype(bool)]
    assert len(unmasked) and unmasked[controls.feature_columns()].isna().all().all()


def test_probe_finds_a_marker_its_summaries_carry_and_not_one_they_do_not():
    train, test = _summaries(160, 0, True), _summaries(200, 1, True)
    predictions = controls.probe_predictions(train, test)
    assert fast_auc(test["idh"].to_numpy() == 1, predictions["p_idh_1"].to_numpy()) > 0.9
    assert 0.35 < fast_auc(test["codeletion"].to_numpy() == 1, predictions["p_codeletion_1"].to_numpy()) < 0.65
    grade = predictions[[f"p_grade_{k}" for k in range(3)]].to_numpy()
    assert np.allclose(grade.sum(1), 1) and (predictions["model"] == "probe_summary").all()
    assert predictions["dice_WT"].isna().all()  # the probe segments nothing


def test_probe_ignores_unknown_labels_and_cases_without_a_mask():
    train, test = _summaries(160, 0, True), _summaries(100, 1, True)
    noisy = train.copy()
    hidden = noisy.index[:60]
    noisy.loc[hidden, "idh"] = -1  # unknown: not fitted
    noisy.loc[noisy.index[60:90], "has_mask"] = False  # no summaries: not fitted
    noisy.loc[noisy.index[60:90], "idh"] = 1 - noisy.loc[noisy.index[60:90], "idh"]  # would mislead if used
    clean = train.drop(index=noisy.index[:90])
    a = controls.probe_predictions(noisy, test)["p_idh_1"].to_numpy()
    b = controls.probe_predictions(clean, test)["p_idh_1"].to_numpy()
    assert np.allclose(a, b)


def test_site_only_baseline_predicts_each_sites_prevalence():
    train, test = _summaries(100, 0, False), _summaries(40, 1, False)
    train["idh"] = (train["site"] == "a").astype(int)  # site a: every case mutant
    predictions = controls.site_only_predictions(train, test)
    by_site = predictions.groupby("site")["p_idh_1"].agg(["min", "max"])
    assert by_site.loc["a", "min"] > 0.8 and by_site.loc["b", "max"] < 0.2
    assert (by_site["max"] - by_site["min"] < 1e-12).all()  # one prediction per site
