"""The benchmark's text is generated from its CSVs: table, shown / not shown claims, the fair budget, and notebook 02
types none of it."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from gliofed.experiments.benchmark import (
    RESULTS_DIR,
    benchmark_claims,
    benchmark_markdown,
    benchmark_table,
    compare_with_benchmark,
    load_benchmark,
    matched_local_epochs,
    site_compute_ratios,
)
from gliofed.notebooks import NOTEBOOK_DIR


@pytest.fixture
def results(tmp_path):
    """A copy of the shipped CSVs that a test may edit."""
    folder = tmp_path / "results"
    folder.mkdir()
    for path in RESULTS_DIR.glob("strategies_*.csv"):
        shutil.copy(path, folder / path.name)
    return folder


def test_the_csvs_ship_with_the_package_and_load():
    benchmark = load_benchmark()
    assert {"fedavg", "distill"} <= set(benchmark.summary["strategy"]) and len(benchmark.seeds) >= 1


def test_the_table_is_the_csvs_means_and_intervals(results):
    summary = pd.read_csv(results / "strategies_summary.csv")
    row = summary[(summary["labels"] == "truth") & (summary["strategy"] == "fedavg")].iloc[0]
    table = benchmark_table(load_benchmark(results))
    assert table.loc["FedAvg", "Dice WT"] == f"{row['dice_WT']:.2f} [{row['dice_WT_lo']:.2f}, {row['dice_WT_hi']:.2f}]"


def test_an_edited_csv_changes_the_text(results):
    summary = pd.read_csv(results / "strategies_summary.csv")
    summary.loc[(summary["labels"] == "truth") & (summary["strategy"] == "fedavg"), "dice_WT"] = 0.1234
    summary.to_csv(results / "strategies_summary.csv", index=False)
    assert "| FedAvg |" in benchmark_markdown(load_benchmark(results))
    assert "0.12 [" in benchmark_table(load_benchmark(results)).loc["FedAvg", "Dice WT"]


def test_claims_are_over_seeds_and_an_interval_containing_zero_is_not_shown(results):
    # distillation's Dice WT is below FedAvg's on every seed by about 0.03 (shown); its mean marker AUC against
    # centralized goes either way from seed to seed (not shown): the verdicts come from the seeds, not a case bootstrap
    rows = []
    for seed, (wt_gap, auc_gap) in enumerate([(-0.03, 0.04), (-0.02, -0.05), (-0.04, 0.03), (-0.03, -0.04)]):
        for arm, wt, auc in (("fedavg", 0.70, 0.80), ("distill", 0.70 + wt_gap, 0.85 + auc_gap),
                             ("centralized", 0.80, 0.85)):
            rows.append({"seed": seed, "strategy": arm, "labels": "truth", "dice_WT": wt, "auc_mean": auc})
    pd.DataFrame(rows).to_csv(results / "strategies_per_seed.csv", index=False)
    pd.DataFrame([{"a": "distill", "b": "fedavg", "metric": "dice_WT", "diff": 9, "lo": 8, "hi": 10},
                  {"a": "distill", "b": "centralized", "metric": "auc_mean", "diff": 9, "lo": 8, "hi": 10}]).to_csv(
        results / "strategies_differences.csv", index=False)  # the case-bootstrap file's values are not used
    claims = benchmark_claims(load_benchmark(results)).set_index(["a", "b", "metric"])
    wt = claims.loc[("distill", "fedavg", "whole-tumour Dice")]
    assert wt["verdict"] == "shown" and wt["n"] == 4 and wt["diff"] == pytest.approx(-0.03)
    assert wt["sentence"].startswith("distillation loses to FedAvg on whole-tumour Dice (-0.03 [")
    assert wt["sentence"].endswith("over 4 seeds)")
    auc = claims.loc[("distill", "centralized", "mean marker AUC")]
    assert auc["verdict"] == "not shown" and auc["lo"] < 0 < auc["hi"]
    text = benchmark_markdown(load_benchmark(results))
    assert "over seeds" in text and "bootstrap over test cases" not in text
    assert text.index("loses to FedAvg") < text.index("**Not shown**") < text.index("against centralized")


def test_the_fair_budget_follows_the_measured_site_compute(results):
    summary = pd.read_csv(results / "strategies_summary.csv")
    for ratio in (3.4, 5.0):
        summary.loc[summary["strategy"] == "distill", "site_s_per_round"] = (
            summary.loc[summary["strategy"] == "fedavg", "site_s_per_round"].iloc[0] * ratio)
        summary.to_csv(results / "strategies_summary.csv", index=False)
        benchmark = load_benchmark(results)
        assert site_compute_ratios(benchmark)["fedavg"] == pytest.approx(ratio)
        epochs = matched_local_epochs(["centralized", "fedavg", "fedprox", "local", "distill"], benchmark=benchmark)
        assert epochs["distill"] == 1 and epochs["fedavg"] == epochs["centralized"] == round(ratio)


def test_a_run_is_compared_with_the_benchmarks_interval():
    history = pd.DataFrame({"strategy": ["fedavg", "fedavg", "distill"], "round": [1, 2, 2],
                            "dice_WT": [0.1, 0.70, 0.0]})
    compared = compare_with_benchmark(history)
    assert bool(compared.loc["fedavg", "inside"]) and not bool(compared.loc["distill", "inside"])


def test_a_missing_results_file_is_a_one_line_error(tmp_path):
    with pytest.raises(Exception, match="strategies_summary.csv: benchmark results not found"):
        load_benchmark(tmp_path)


def test_notebook_02_types_no_benchmark_number_and_renders_the_csvs():
    cells = json.loads((NOTEBOOK_DIR / "02_federated_training.ipynb").read_text())["cells"]
    prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert not re.findall(r"\d\.\d\d", prose)  # every benchmark figure has two decimals: none is typed
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "benchmark_markdown(" in code and "compare_with_benchmark(" in code and "matched_local_epochs(" in code
