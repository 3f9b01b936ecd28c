"""gliofed.experiments.study (compute metering, seed-level tables) and benchmarks/bench_comparison.py (tasks,
resume, merge)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gliofed.experiments import study as benchmark
from gliofed.model import MultiTaskUNet

T4 = 2.7764451051977934  # Student t, 97.5 %, 4 degrees of freedom

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_comparison.py"
_spec = importlib.util.spec_from_file_location("bench_comparison", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_comparison"] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)


def _small_model() -> MultiTaskUNet:
    torch.manual_seed(0)
    return MultiTaskUNet(features=(4, 8, 16, 32), hidden=8)


def test_compute_meter_counts_voxels_forward_and_three_times_under_autograd():
    model = _small_model()
    with benchmark.ComputeMeter() as meter:
        with torch.no_grad():
            model(torch.zeros(2, 4, 8, 16, 16))
        model(torch.zeros(1, 4, 8, 16, 16))["seg"].sum().backward()  # a training step's forward
    model(torch.zeros(1, 4, 8, 16, 16))  # after the meter: not counted
    assert meter.forward_voxels == 2 * 8 * 16 * 16 and meter.grad_voxels == 8 * 16 * 16
    assert meter.voxel_passes == 2 * 2048 + 3 * 2048


def test_compute_meter_counts_a_frozen_network_under_autograd_when_its_input_needs_gradients():
    model = _small_model().requires_grad_(False)
    images = torch.zeros(3, 4, 4, 8, 8, requires_grad=True)  # condensation: gradients reach the input only
    with benchmark.ComputeMeter() as meter:
        model(images)
        model(torch.zeros(3, 4, 4, 8, 8))  # nothing needs gradients: a plain forward
    assert meter.grad_voxels == 3 * 256 and meter.forward_voxels == 3 * 256


def _per_seed(b_values, differences, arm_a="a", arm_b="b"):
    rows = []
    for seed, (b, d) in enumerate(zip(b_values, differences)):
        rows.append({"seed": seed, "arm": arm_b, "labels": "truth", "dice_WT": b})
        rows.append({"seed": seed, "arm": arm_a, "labels": "truth", "dice_WT": b + d})
    return pd.DataFrame(rows)


def test_seed_summary_is_the_t_interval_over_seeds_per_arm_and_metric():
    table = benchmark.seed_summary(_per_seed([1, 2, 3, 4, 5], [0] * 5), metrics=["dice_WT"]).set_index("arm")
    assert table.loc["b", "n"] == 5 and table.loc["b", "mean"] == pytest.approx(3)
    assert table.loc["b", "lo"] == pytest.approx(3 - T4 * math.sqrt(2.5 / 5))


def test_seed_differences_pair_seeds_and_give_known_interval_ratio_and_verdict():
    per_seed = _per_seed([0.5] * 5, [0.01, 0.02, 0.03, 0.04, 0.05])
    per_seed = pd.concat([per_seed, pd.DataFrame([{"seed": 9, "arm": "a", "labels": "truth", "dice_WT": 0.0}])])
    row = benchmark.seed_differences(per_seed, [("a", "b"), ("a", "absent")], metrics=["dice_WT"]).iloc[0]
    assert row["n"] == 5  # seed 9 has no partner
    assert row["diff"] == pytest.approx(0.03) and row["lo"] == pytest.approx(0.03 - T4 * math.sqrt(2.5e-4 / 5))
    assert row["verdict"] == "a > b" and row["p"] < 0.05
    # b is constant: Fieller's interval is the t-interval of a over b's mean
    assert row["ratio"] == pytest.approx(0.53 / 0.5) and row["ratio_lo"] == pytest.approx((0.53 - (0.03 - row["lo"]))
                                                                                          / 0.5)
    assert row["log_ratio_lo"] < row["log_ratio"] < row["log_ratio_hi"]
    assert np.isnan(row["boot_lo"])  # no bootstrap asked
    assert len(benchmark.seed_differences(per_seed, [("a", "absent")], metrics=["dice_WT"])) == 0


def _model_predictions(rng, n, model="global", shift=0.0):
    frame = {"subject": [f"s{i:03d}" for i in range(n)], "site": "s", "model": model, "has_mask": True}
    for marker, classes in (("idh", 2), ("codeletion", 2), ("mgmt", 2), ("grade", 3)):
        truth = rng.integers(0, classes, n)
        logits = rng.normal(size=(n, classes)) + shift * np.eye(classes)[truth]
        probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        frame[marker] = truth
        frame.update({f"p_{marker}_{k}": probabilities[:, k] for k in range(classes)})
    frame.update({f"dice_{r}": rng.uniform(0, 1, n) for r in ("WT", "TC", "ET")})
    return pd.DataFrame(frame)


def test_the_two_level_bootstrap_of_a_pair_is_each_metrics_own_bootstrap_from_the_same_draws():
    rng = np.random.default_rng(0)
    seeds = [0, 1, 2]
    predictions = {("c", s, "a"): _model_predictions(rng, 12, shift=1.5) for s in seeds}
    predictions |= {("c", s, "b"): pd.concat([_model_predictions(rng, 12, model=f"site{k}") for k in range(2)])
                    for s in seeds}  # b: two models (local-only), scored as their mean
    per_seed = pd.DataFrame([{"cohort": "c", "seed": s, "arm": arm, "labels": "truth",
                              **benchmark.score_models(predictions[("c", s, arm)])} for s in seeds for arm in "ab"])
    metrics = ["auc_idh", "auc_mean", "dice_WT"]
    bootstrap = {"predictions": predictions, "n_boot": 40, "seed": 5, "labels": "truth"}
    table = benchmark.seed_differences(per_seed, [("a", "b")], metrics, bootstrap=bootstrap).set_index("metric")
    frames = [(predictions[("c", s, "a")], predictions[("c", s, "b")]) for s in seeds]
    for metric in metrics:  # the straightforward bootstrap, one metric at a time through score_models
        def statistic(draw, metric=metric):  # a drawn seed whose cases give no score (one class) is left out
            values = [benchmark.score_models(frames[i][0], rows)[metric]
                      - benchmark.score_models(frames[i][1], rows)[metric] for i, rows in draw]
            values = [v for v in values if np.isfinite(v)]
            return float(np.mean(values)) if values else float("nan")
        lo, hi, _ = benchmark.stats.two_level_bootstrap([12, 12, 12], statistic, 40, seed=5)
        assert (table.loc[metric, "boot_lo"], table.loc[metric, "boot_hi"]) == pytest.approx((lo, hi))
    assert table.loc["auc_idh", "boot_lo"] < table.loc["auc_idh", "boot_hi"]
    parallel = benchmark.seed_differences(per_seed, [("a", "b"), ("b", "a")], metrics,
                                          bootstrap={**bootstrap, "jobs": 2})
    first = parallel[(parallel["a"] == "a")].set_index("metric")
    assert np.allclose(first[["boot_lo", "boot_hi"]], table[["boot_lo", "boot_hi"]])  # processes change nothing
    second = parallel[(parallel["a"] == "b")].set_index("metric")
    assert np.allclose(second["boot_lo"], -table["boot_hi"]) and np.allclose(second["boot_hi"], -table["boot_lo"])
    # a probe segments nothing: its Dice difference has no interval; the manifest's rows are not bootstrapped; a seed
    # scored only under the other label source is not drawn; no resamples, no interval
    for s in seeds:
        predictions[("c", s, "probe")] = _model_predictions(rng, 12, model="probe").assign(dice_WT=np.nan)
    predictions |= {("c", 7, arm): _model_predictions(rng, 12, shift=3.0) for arm in "ab"}  # drawn if a truth seed
    probe_rows = pd.DataFrame([{"cohort": "c", "seed": s, "arm": "probe", "labels": "truth",
                                **benchmark.score_models(predictions[("c", s, "probe")])} for s in seeds])
    both = pd.concat([per_seed, probe_rows, per_seed.assign(labels="manifest"),
                      per_seed[per_seed["seed"] == 0].assign(seed=7, labels="manifest")])
    mixed = benchmark.seed_differences(both, [("a", "probe"), ("a", "b")], metrics, bootstrap=bootstrap)
    truth = mixed[mixed["labels"] == "truth"].set_index(["b", "metric"])
    assert np.isnan(truth.loc[("probe", "dice_WT"), "boot_lo"]) and np.isfinite(truth.loc[("probe", "auc_idh"),
                                                                                         "boot_lo"])
    assert np.allclose(truth.loc["b"][["boot_lo", "boot_hi"]], table[["boot_lo", "boot_hi"]])  # seed 7: manifest only
    assert mixed.loc[mixed["labels"] == "manifest", "boot_lo"].isna().all()
    none = benchmark.seed_differences(per_seed, [("a", "b")], metrics, bootstrap={**bootstrap, "n_boot": 0})
    assert none["boot_lo"].isna().all() and none["boot_hi"].isna().all()


def test_scores_of_control_predictions_leave_dice_blank():
    frame = pd.DataFrame({"subject": ["x", "y", "z", "w"], "site": "s", "model": "probe", "has_mask": True,
                          "idh": [0, 1, 0, 1], "codeletion": [0, 1, 0, 1], "mgmt": [0, 1, 0, 1], "grade": [0, 1, 2, 0],
                          **{f"p_{m}_{k}": [0.2, 0.8, 0.3, 0.7] if k == 1 else [0.8, 0.2, 0.7, 0.3]
                             for m in ("idh", "codeletion", "mgmt") for k in (0, 1)},
                          **{f"p_grade_{k}": [1 / 3] * 4 for k in range(3)}, "dice_WT": np.nan})
    scores = benchmark.score_models(frame)
    assert scores["auc_idh"] == 1.0 and np.isnan(scores["dice_WT"]) and np.isnan(scores["dice_TC"])
    # grade's constant scores give AUC 0.5: the mean of IDH, 1p/19q and grade is 2.5 / 3, and its part above chance
    # (what the preregistered ratio is taken of) is that minus 0.5
    assert scores["auc_mean"] == pytest.approx(2.5 / 3)
    assert scores["auc_mean_above_chance"] == pytest.approx(2.5 / 3 - 0.5)


@pytest.mark.slow  # about a minute on 2 idle cores: three cohorts, ten runs, four merges
def test_smoke_design_runs_resumes_and_merges_with_seed_level_tables(tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench.main(["--design", "smoke", "--out", str(out), "--n-boot", "20"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["done"] == 12 and not results["missing"] and len(results["code"]) == 1
    assert results["merged_by"] == bench.git_commit()  # the merging code is named beside the runs' commits
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["arm"]) == {"fedavg", "fedavg@r1", "fedavg_1round", "distill", "probe_summary", "site_only"}
    truth = summary[summary["labels"] == "truth"]
    assert (truth.loc[truth["metric"].str.startswith("auc"), "n"] == 2).all()
    assert (truth.loc[truth["metric"].str.startswith("dice") & truth["arm"].isin(["probe_summary", "site_only"]),
                      "n"] == 0).all()  # controls segment nothing
    differences = pd.read_csv(out / "differences.csv")
    assert {"diff", "lo", "hi", "p", "verdict", "ratio_lo", "boot_lo"} <= set(differences.columns)
    assert np.isfinite(differences["boot_lo"]).any() and results["n_boot"] == 20
    assert "| bootstrap [seeds, cases] |" in (out / "table.md").read_text()  # beside the t-intervals
    costs = pd.read_csv(out / "costs.csv").set_index("arm")
    assert costs.loc["distill", "site_voxel_passes"] > 0 and costs.loc["probe_summary", "site_voxel_passes"] == 0
    assert costs.loc["distill", "bytes_up"] < costs.loc["fedavg", "bytes_up"]
    assert costs.loc["fedavg@r1", "rounds"] == 1 and costs.loc["fedavg", "rounds"] == 2
    assert costs.loc["fedavg@r1", "bytes_up"] == pytest.approx(costs.loc["fedavg", "bytes_up"] / 2, rel=1e-3)
    # the model after round 1 of a 2-round run (resumed from its checkpoint) is the 1-round run's model
    snapshot = pd.read_csv(out / "workshop" / "run_1_fedavg" / "test_predictions@r1.csv")
    one_round = pd.read_csv(out / "workshop" / "run_1_fedavg_1round" / bench.TEST_PREDICTIONS)
    pd.testing.assert_frame_equal(snapshot, one_round)
    first = pd.read_csv(out / "per_seed.csv")
    # the fixed test cohort: every case of it scored, REMBRANDT's included (it carries every mask)
    predictions = pd.read_csv(out / "workshop" / "run_0_fedavg" / bench.TEST_PREDICTIONS)
    assert len(predictions) == 5 * 3 and predictions["has_mask"].all()
    capsys.readouterr()
    assert bench.main(["--design", "smoke", "--out", str(out)]) == 0  # resumed: nothing left to run
    assert "10 done, 0 to run" in capsys.readouterr().out
    pd.testing.assert_frame_equal(first.drop(columns="wall_s"), pd.read_csv(out / "per_seed.csv").drop(
        columns="wall_s"))
    (out / "workshop" / "run_1_distill" / bench.COST).unlink()
    pd.DataFrame({"arm": ["fedavg"], "tpr_at_1pct_fpr": [0.02]}).to_csv(tmp_path / "leak.csv", index=False)
    assert bench.main(["--design", "smoke", "--out", str(out), "--merge-only", "--leakage",
                       str(tmp_path / "leak.csv")]) == 0
    assert json.loads((out / "results.json").read_text())["missing"] == ["workshop/seed 1/distill"]
    leakage = pd.read_csv(out / "costs.csv").set_index("arm")["tpr_at_1pct_fpr"]
    assert leakage["fedavg"] == 0.02 and leakage.drop("fedavg").isna().all()  # blank where not measured
    assert "| 0.020 |" in (out / "table.md").read_text()
    cost = json.loads((out / "workshop" / "run_0_fedavg" / bench.COST).read_text())
    cost["settings"] = "other"
    (out / "workshop" / "run_0_fedavg" / bench.COST).write_text(json.dumps(cost))
    with pytest.raises(SystemExit):  # a run made otherwise is never reused, nor silently replaced
        bench.main(["--design", "smoke", "--out", str(out), "--arms", "fedavg"])


def test_every_tuned_strategy_gets_exactly_four_configurations_at_the_preregistered_budget():
    assert set(bench.TUNING_GRID) == {"fedavg", "fedprox", "fedavgm", "fedadam", "fedbn", "distill"}
    for arms in bench.TUNING_GRID.values():
        assert len(arms) == 4 and len({a.name for a in arms}) == 4
        for arm in arms:
            expected = bench.DISTILL_ROUNDS if arm.strategy == "distill" else bench.ROUNDS_CPU[arm.local_epochs]
            assert arm.rounds == expected
    assert bench.DESIGNS["dev"].seeds == (10, 11)


def test_tuning_choice_takes_the_best_criterion_and_the_cheaper_of_a_tie():
    rows = []
    for strategy, arms in bench.TUNING_GRID.items():
        for i, arm in enumerate(arms):
            for seed in (10, 11):
                score = 0.6 + 0.01 * i if strategy != "fedavg" else [0.7, 0.702, 0.5, 0.6][i]
                rows.append({"seed": seed, "arm": arm.name, "labels": "truth", "auc_mean": score, "dice_WT": score,
                             "site_cpu_s": 100.0 - i})
    table, choice = bench.tuning_choice(pd.DataFrame(rows))
    assert choice["fedprox"] == bench.TUNING_GRID["fedprox"][3].name  # the best
    assert choice["fedavg"] == bench.TUNING_GRID["fedavg"][1].name  # 0.702 vs 0.700: a tie, the cheaper
    assert table["chosen"].sum() == 6 and len(table) == 24
    missing = pd.DataFrame([r for r in rows if not (r["arm"] == "fedadam-e1-lr1e-3" and r["seed"] == 11)])
    assert "fedadam" not in bench.tuning_choice(missing)[1]  # a configuration not run on every seed: no choice


def test_the_prereg_design_holds_the_chosen_configurations_its_controls_and_snapshots():
    chosen = {strategy: arms[1].name for strategy, arms in bench.TUNING_GRID.items()}
    design = bench.prereg_design(chosen)
    arms = {arm.name: arm for arm in design.arms}
    assert design.seeds == tuple(range(200, 210)) and design.test_seeds == {"workshop": 9000, "hard": 9001}
    assert arms["fedavg"].local_epochs == 2 and arms["fedavg"].snapshots == (("vp", bench.ROUNDS_VP[2]),)
    assert arms["fedavg_fp16"].options["transport"] == "float16" and arms["fedavg_fp16"].rounds == arms["fedavg"].rounds
    assert arms["distill_0step"].distill["steps"] == 0 and arms["distill_noise"].distill["init"] == "noise"
    assert arms["distill"].distill == {"server_epochs": 20}  # the chosen distillation, and its controls share it
    assert {"probe_summary", "probe_means", "site_only", "centralized", "local"} <= set(arms)
    named = set(arms) | {"fedavg@vp"}
    assert all(a in named and b in named for a, b in design.pairs)


def test_the_frozen_prereg_design_is_the_tuning_csvs_choice_with_the_learnability_reference():
    """CHOSEN (frozen with the preregistration) is what the committed tuning results chose, and the prereg design
    adds the centralized reference at 3x the budget's epochs."""
    tuning = pd.read_csv(Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "comparison_dev_tuning.csv")
    chosen = tuning[tuning["chosen"].astype(bool)]
    assert dict(zip(chosen["strategy"], chosen["arm"])) == bench.CHOSEN
    arms = {arm.name: arm for arm in bench.DESIGNS["prereg"].arms}
    assert arms["centralized_12"].rounds == 3 * arms["centralized"].rounds == 3 * bench.CENTRALIZED_EPOCHS
    assert ("centralized_12", "probe_summary") in bench.DESIGNS["prereg"].pairs


@pytest.mark.parametrize("flags", [["--jobs", "0"], ["--n-boot", "-1"]])
def test_bad_jobs_or_bootstrap_counts_stop_before_any_work(tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--design", "smoke", "--out", str(tmp_path / "bench"), *flags])
    assert stop.value.code == 2 and flags[0] in capsys.readouterr().err and not (tmp_path / "bench").exists()


def test_a_snapshot_at_the_last_round_is_the_final_model_and_is_not_scored_twice():
    arms = (bench.Arm("fedavg", "fedavg", 5, snapshots=(("vp", 5), ("r2", 2))),)
    design = bench.Design(seeds=(0,), cohorts=("workshop",), arms=arms, pairs=(("fedavg@vp", "fedavg@r2"),))
    names = [name for name, _, _ in bench.scored_arms(design)]
    assert names == ["fedavg", "fedavg@r2"]
    assert bench.final_snapshots(design) == {"fedavg@vp": "fedavg"}  # its pairs are the arm's, and table.md says so
    assert bench.final_snapshots(bench.DESIGNS["prereg"]) == {"fedavg@vp": "fedavg"}
    result = {"code": ["abc"], "commits": ["c1"], "devices": ["CPU"], "finished": ["t0", "t1"], "done": 1,
              "missing": [], "final_snapshots": {"fedavg@vp": "fedavg"}}
    text = bench.markdown(pd.DataFrame(columns=["cohort", "labels", "arm", "metric", "n", "mean", "lo", "hi"]),
                          pd.DataFrame(), pd.DataFrame(columns=["cohort", "arm"]), result)
    assert "`fedavg@vp` is `fedavg`'s final model (a snapshot at its last round): its comparisons are `fedavg`'s." \
        in text


def test_pareto_front_keeps_the_points_no_other_point_dominates():
    points = [("free", 0.0, 0.5), ("cheap", 1.0, 0.6), ("worse", 2.0, 0.55), ("tie", 1.0, 0.6),
              ("dear", 5.0, 0.9), ("dearer", 9.0, 0.9), ("nan", float("nan"), 1.0)]
    assert bench.pareto_front(points) == ["free", "cheap", "tie", "dear"]  # ties dominate neither; "dearer" loses
    assert bench.pareto_front([]) == []


def test_pareto_figure_draws_every_arm_and_puts_a_zero_cost_below_the_smallest(tmp_path):
    summary = pd.DataFrame([{"cohort": "workshop", "labels": "truth", "arm": arm, "metric": metric, "n": 10,
                             "mean": mean, "lo": mean - 0.05, "hi": mean + 0.05}
                            for arm, mean in (("fedavg", 0.8), ("distill", 0.7), ("probe_summary", 0.75))
                            for metric in ("auc_mean", "dice_WT")])
    costs = pd.DataFrame([{"cohort": "workshop", "arm": "fedavg", "site_gvox": 0.2, "site_cpu_s": 30.0,
                           "bytes_up": 5e7, "bytes_down": 5e7},
                          {"cohort": "workshop", "arm": "distill", "site_gvox": 0.3, "site_cpu_s": 36.0,
                           "bytes_up": 1e6, "bytes_down": 2e7},
                          {"cohort": "workshop", "arm": "probe_summary", "site_gvox": 0.0, "site_cpu_s": 0.0,
                           "bytes_up": 0.0, "bytes_down": 0.0},
                          {"cohort": "workshop", "arm": "unknown_cost", "site_gvox": float("nan"),
                           "site_cpu_s": float("nan"), "bytes_up": float("nan"), "bytes_down": float("nan")}])
    summary = pd.concat([summary, summary[summary["arm"] == "distill"].assign(arm="unknown_cost", mean=0.99)])
    figure = bench.pareto_figure(summary, costs, tmp_path / "pareto.html")
    html = (tmp_path / "pareto.html").read_text()
    points = [t for t in figure.data if t.mode == "markers+text"]
    for arm in ("fedavg", "distill", "probe_summary"):
        mine = [t for t in points if t.name == arm]
        assert len(mine) == 8 and len({(t.marker.color, t.marker.symbol) for t in mine}) == 1  # the same in each panel
        assert sum(bool(t.showlegend) for t in mine) == 1  # one legend entry
    assert len({t.marker.color for t in points}) == 3  # and a different one for each arm
    assert html.count('"text":["fedavg"]') == 8 and html.count('"text":["probe_summary"]') == 8
    assert '"x":[0.02]' in html  # the probe's 0 Gvox drawn at a tenth of fedavg's 0.2 (not at 1, above every arm)
    assert '"dash":"dash"' in html and not (tmp_path / "pareto.tmp.html").exists()
    assert '"text":["unknown_cost"]' not in html  # an unknown cost is neither drawn as free nor on the front
