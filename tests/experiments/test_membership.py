"""Membership inference: member / non-member construction, the metrics, and the attack's sanity check on tiny
deliberately overfit models (logistic regression with more features than training points and random labels)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from gliofed.errors import ConfigError
from gliofed.experiments.membership import (
    attack_metrics,
    attack_scores,
    calibrated_tpr,
    logit_confidence,
    membership_matrix,
    run_attack,
    score_frame,
    summarise,
    tpr_at_fpr,
)

N_CANDIDATES, N_FEATURES, N_MODELS = 96, 150, 16


def _pool(seed: int):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N_CANDIDATES, N_FEATURES)), rng.integers(0, 2, N_CANDIDATES)


def _confidence(train_x, train_y, x, y):
    """Fit a model that memorises its training points (150 features, 48 points, random labels, almost no
    regularisation) and return the logit-scaled confidence on every candidate's label."""
    model = LogisticRegression(C=1e4, max_iter=2000).fit(train_x, train_y)
    return logit_confidence(model.predict_proba(x), y)


@pytest.fixture(scope="module")
def shadow_runs():
    x, y = _pool(0)
    membership = membership_matrix(N_CANDIDATES, N_MODELS, seed=1)
    statistic = np.stack([_confidence(x[m], y[m], x, y) for m in membership])
    return x, y, membership, statistic


def test_every_candidate_is_in_exactly_half_of_the_runs():
    membership = membership_matrix(9, 6, seed=3)
    assert membership.shape == (6, 9) and (membership.sum(0) == 3).all()
    assert not (membership == membership_matrix(9, 6, seed=4)).all()
    with pytest.raises(ConfigError, match="even"):
        membership_matrix(9, 5)


def test_logit_confidence_is_the_log_odds_of_the_true_label_and_nan_when_unknown():
    values = logit_confidence(np.array([[0.8, 0.2], [0.5, 0.5], [0.1, 0.9]]), np.array([0, 1, -1]))
    assert values[0] == pytest.approx(np.log(4.0)) and values[1] == pytest.approx(0.0) and np.isnan(values[2])


def test_tpr_at_fpr_reads_the_roc_curve():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    members = np.array([True, True, False, True, False, False])
    assert tpr_at_fpr(scores, members, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(scores, members, 0.34) == pytest.approx(1.0)
    metrics = attack_metrics(scores, members)
    assert metrics["auc"] == pytest.approx(8 / 9) and metrics["n_members"] == 3 and metrics["n_nonmembers"] == 3


def test_lira_finds_the_members_of_an_overfit_model(shadow_runs):
    _, _, membership, statistic = shadow_runs
    scores, members = run_attack(statistic, membership, "lira")
    metrics = attack_metrics(scores, members)
    assert metrics["tpr@0.01"] > 0.5 and metrics["auc"] > 0.95


def test_the_cheaper_attacks_find_them_too_the_global_threshold_only_on_average(shadow_runs):
    """Offline LiRA (OUT shadows only) still works at low FPR; one global threshold separates members on average
    (AUC) but not at 1 % FPR, because candidates differ in how hard they are (Carlini et al. 2022's point)."""
    _, _, membership, statistic = shadow_runs
    offline = attack_metrics(*run_attack(statistic, membership, "offline"))
    threshold = attack_metrics(*run_attack(statistic, membership, "threshold"))
    assert offline["tpr@0.01"] > 0.2 and threshold["auc"] > 0.8 and threshold["tpr@0.01"] < offline["tpr@0.01"]


def test_the_attack_stays_at_chance_on_models_trained_without_the_targets(shadow_runs):
    """Target models trained on fresh patients only: half of the pool is called "member", none was used."""
    x, y, membership, statistic = shadow_runs
    pairs = []
    for k in range(4):
        fresh_x, fresh_y = _pool(100 + k)
        target = _confidence(fresh_x[:48], fresh_y[:48], x, y)
        called_members = membership_matrix(N_CANDIDATES, 2, seed=200 + k)[0]
        pairs.append((attack_scores(target, statistic, membership, "lira"), called_members))
    metrics = attack_metrics(np.concatenate([s for s, _ in pairs]), np.concatenate([m for _, m in pairs]))
    assert 0.4 < metrics["auc"] < 0.6 and metrics["tpr@0.01"] <= 0.05


def test_calibrated_threshold_keeps_its_false_positive_rate_near_the_target(shadow_runs):
    _, _, membership, statistic = shadow_runs
    tpr, realised = calibrated_tpr(statistic[0], membership[0], statistic[1:], membership[1:], fpr=0.05)
    assert realised <= 0.15 and tpr > realised


def test_summarise_gives_means_over_seeds_with_intervals_that_contain_them():
    rng = np.random.default_rng(0)
    frames = []
    for seed in range(3):
        members = membership_matrix(40, 4, seed=seed)
        scores = members + rng.normal(0, 1.0, members.shape)
        frames.append(score_frame(scores, members, seed, part="bn"))
    table = summarise(pd.concat(frames), by=["part"], n_boot=100)
    row = table.iloc[0]
    assert row["seeds"] == 3 and row["runs"] == 4 and row["n_members"] == 80 and row["n_nonmembers"] == 80
    for metric in ("auc", "tpr@0.01"):
        assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"]
    assert 0.65 < row["auc"] < 0.85 and len(row["auc_seeds"].split(";")) == 3
    assert row["auc_lo"] < row["auc_hi"]  # resampling seeds and runs moves the metric


def test_one_seed_still_gets_an_interval_over_its_runs():
    rng = np.random.default_rng(1)
    members = membership_matrix(30, 6, seed=0)
    frame = score_frame(members + rng.normal(0, 1.0, members.shape), members, 0, target="update")
    row = summarise(frame, by=["target"], n_boot=100).iloc[0]
    assert row["seeds"] == 1 and row["runs"] == 6 and row["auc_lo"] < row["auc"] < row["auc_hi"]
