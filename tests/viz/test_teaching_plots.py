"""The figures the teaching notebooks add: reliability diagram, per-site learning curves, accuracy against bytes,
client drift, synthetic volumes beside a real case, the audit's histogram, the toy average."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gliofed.experiments.teaching import Drift, library_average, toy_sites
from gliofed.metrics import expected_calibration_error
from gliofed.viz.plots import (
    plot_accuracy_vs_bytes,
    plot_audit,
    plot_drift,
    plot_reliability,
    plot_site_curves,
    plot_synthetic_vs_real,
    plot_toy_average,
)
from tests.viz.test_plots import fake_predictions


def test_reliability_diagram_draws_the_calibration_curve_with_its_ece():
    from sklearn.calibration import calibration_curve

    predictions = fake_predictions(n=200)
    fig = plot_reliability({"fedavg": predictions}, markers=("idh",), bins=4)
    curve = next(t for t in fig.data if t.name.startswith("fedavg"))
    known = predictions[predictions["idh"] >= 0]
    observed, predicted = calibration_curve(known["idh"], known["p_idh_1"], n_bins=4)
    assert np.allclose(curve.x, predicted) and np.allclose(curve.y, observed)
    assert f"ECE {expected_calibration_error(known['idh'], known['p_idh_1']):.2f}" in curve.name
    assert fig.data[0].name == "calibrated" and list(fig.data[0].x) == [0, 1]


def _history():
    return pd.DataFrame({"strategy": ["fedavg"] * 2 + ["distill"] * 2 + ["local"],
                         "round": [1, 2, 1, 2, 2], "bytes_up": [10 * 2**20, 10 * 2**20, 2**20, 2**20, 0],
                         "bytes_down": [10 * 2**20, 10 * 2**20, 10 * 2**20, 10 * 2**20, 0],
                         "dice_WT": [0.3, 0.6, 0.2, 0.5, 0.4]})


def test_accuracy_against_bytes_accumulates_what_was_sent_and_names_silent_strategies():
    fig = plot_accuracy_vs_bytes(_history())
    lines = {t.name: t for t in fig.data}
    assert list(lines["fedavg"].x) == [20, 40] and list(lines["distill"].x) == [11, 22]
    assert list(lines["fedavg"].y) == [0.3, 0.6] and "local" not in lines
    assert "nothing sent: local 0.40" in fig.layout.title.text


def test_site_curves_have_one_panel_per_strategy_and_one_line_per_site():
    sites = pd.DataFrame({"strategy": ["fedavg"] * 4 + ["local"] * 2, "round": [1, 1, 2, 2, 2, 2],
                          "site": ["a", "b", "a", "b", "a", "b"], "dice_WT": [0.1, 0.2, 0.3, np.nan, 0.5, 0.6]})
    fig = plot_site_curves(sites)
    assert [a.text for a in fig.layout.annotations] == ["fedavg", "local"]
    first = [t for t in fig.data if t.xaxis == "x"]
    assert {t.name for t in first} == {"a", "b"} and list(next(t for t in first if t.name == "b").y) == [0.2]


def test_drift_projects_every_model_and_bars_each_sites_distance():
    rng = np.random.default_rng(0)
    start = rng.normal(size=50)
    vectors = {"fedavg": {"start": start, "average": start + 0.5, "a": start + 1, "b": start - 1 + rng.normal(size=50)}}
    table = pd.DataFrame({"strategy": "fedavg", "site": ["a", "b"], "n_cases": [3, 4], "to_start": [7.1, 9.0],
                          "to_average": [1.0, 2.0], "relative": [0.1, 0.2]})
    fig = plot_drift(Drift(table, vectors))
    points = next(t for t in fig.data if t.type == "scatter" and t.mode == "markers+text")
    assert list(points.text) == ["start", "average", "a", "b"]
    assert list(next(t for t in fig.data if t.type == "bar").y) == [7.1, 9.0]


def test_audit_histogram_marks_each_sites_threshold_and_synthetic_volumes():
    audit = pd.DataFrame({"site": ["a", "a", "b"], "init": ["class_stats", "real_unsafe", "class_stats"],
                          "nn_corr": [0.2, 0.9, 0.1], "threshold": [0.5, 0.5, 0.62], "synthetic": [0, 0, 0]})
    real = pd.DataFrame({"site": ["a", "a", "b", "b"], "subject": list("wxyz"), "nn_corr": [0.1, 0.3, 0.2, 0.4]})
    fig = plot_audit(audit, real)
    assert sorted(s.x0 for s in fig.layout.shapes) == [0.5, 0.62]
    unsafe = [t for t in fig.data if t.name == "synthetic (real_unsafe)"]
    assert len(unsafe) == 2 and list(unsafe[0].x) == [0.9]


def test_synthetic_volumes_are_shown_beside_a_real_case(tiny_cache):
    from gliofed.data.cache import read_index
    from gliofed.federated.protocol import Payload

    subject = read_index(tiny_cache).query("has_mask")["subject_id"].iloc[0]
    rng = np.random.default_rng(0)
    payload = Payload("distilled_set", {"syn_images": rng.normal(size=(3, 4, 4, 8, 8)).astype(np.float16),
                                        "syn_masks": rng.integers(0, 4, (3, 4, 8, 8)).astype(np.uint8)}, {})
    fig = plot_synthetic_vs_real(payload, tiny_cache, subject)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"real {subject}", "real, upload grid", "synthetic 1", "synthetic 2", "synthetic 3"]
    assert np.asarray(fig.data[4].z).shape == (8, 8)  # the first synthetic volume at its own (low) resolution
    one = plot_synthetic_vs_real(payload, tiny_cache, subject, volumes=[2])
    assert [a.text for a in one.layout.annotations][-1] == "synthetic 3" and len(one.layout.annotations) == 3


@pytest.mark.parametrize("seed", [0, 1])
def test_toy_average_panel_shows_the_average(seed):
    sites = toy_sites(seed=seed)
    averaged = library_average(sites)
    fig = plot_toy_average(sites, averaged)
    assert len(fig.data) == 4 and np.allclose(fig.data[-1].z, averaged["w:layer.weight"])
