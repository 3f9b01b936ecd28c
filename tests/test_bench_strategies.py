"""benchmarks/bench_strategies.py: its statistics, and a run at the smallest setting."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_strategies.py"
_spec = importlib.util.spec_from_file_location("bench_strategies", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _predictions(rng, n, quality, model="global"):
    """Fake test predictions whose marker probabilities separate the classes by ``quality``."""
    rows = []
    for i in range(n):
        labels = {"idh": i % 2, "codeletion": (i // 2) % 2, "mgmt": (i // 3) % 2, "grade": i % 3}
        row = {"subject": f"s{i:02d}", "site": "a", "model": model, "has_mask": i % 4 != 0, **labels,
               "dice_WT": quality, "dice_TC": quality / 2, "dice_ET": quality / 3}
        for marker in ("idh", "codeletion", "mgmt"):
            p = np.clip(0.5 + quality * (labels[marker] - 0.5) + rng.normal(0, 0.2), 0, 1)
            row[f"p_{marker}_1"], row[f"p_{marker}_0"] = p, 1 - p
        logits = rng.normal(0, 0.3, 3)
        logits[labels["grade"]] += 3 * quality
        probs = np.exp(logits) / np.exp(logits).sum()
        for k in range(3):
            row[f"p_grade_{k}"] = probs[k]
        rows.append(row)
    return pd.DataFrame(rows)


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    per_seed = {s: {"good": _predictions(rng, 40, 0.9), "bad": _predictions(rng, 40, 0.1),
                    "same": _predictions(rng, 40, 0.1)} for s in (0, 1)}
    real = pd.DataFrame(bench.paired_differences(per_seed, "good", "bad", n_boot=200)).set_index("metric")
    null = pd.DataFrame(bench.paired_differences(per_seed, "same", "bad", n_boot=200)).set_index("metric")
    assert real.loc["auc_mean", "lo"] > 0 and real.loc["dice_WT", "diff"] == pytest.approx(0.8)
    assert null.loc["auc_mean", "lo"] < 0 < null.loc["auc_mean", "hi"]


def test_local_only_scores_are_the_mean_over_site_models():
    rng = np.random.default_rng(1)
    a, b = _predictions(rng, 30, 0.9, model="a"), _predictions(rng, 30, 0.2, model="b")
    both = bench.score_models(pd.concat([a, b]))
    assert both["dice_WT"] == pytest.approx((bench.score(a)["dice_WT"] + bench.score(b)["dice_WT"]) / 2)
    assert both["auc_idh"] == pytest.approx((bench.score(a)["auc_idh"] + bench.score(b)["auc_idh"]) / 2)


def test_t_interval_over_seeds():
    mean, lo, hi = bench.t_interval([0.6, 0.7, 0.8])
    assert hi - mean == pytest.approx(mean - lo)
    assert mean == pytest.approx(0.7) and lo == pytest.approx(0.7 - 4.303 * 0.1 / 3 ** 0.5, abs=1e-3)
    assert np.isnan(bench.t_interval([0.5])[1])


def test_smoke_run_writes_table_csv_and_offline_figure(tmp_path):
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["strategy"]) == {"fedavg", "distill"} and set(summary["labels"]) == {"truth", "manifest"}
    per_seed = pd.read_csv(tmp_path / "per_seed.csv")
    assert (per_seed["bytes_up_per_client_round"] > 0).all() and (per_seed["site_s_per_round"] > 0).all()
    distill = summary[summary["strategy"] == "distill"]["bytes_up_per_client_round"].iloc[0]
    fedavg = summary[summary["strategy"] == "fedavg"]["bytes_up_per_client_round"].iloc[0]
    assert distill < fedavg
    table = (tmp_path / "table.md").read_text()
    assert "hidden true labels" in table and "manifest's known labels" in table and "distill − fedavg" in table
    differences = pd.read_csv(tmp_path / "differences.csv")  # paired over seeds; the case bootstrap kept aside
    assert {"diff", "lo", "hi", "p", "n", "verdict", "case_lo", "case_hi"} <= set(differences.columns)
    assert (differences["n"] == 1).all() and differences["lo"].isna().all()  # one seed: no interval
    html = (tmp_path / "pareto.html").read_text()
    assert "plotly" in html and "cdn.plot.ly" not in html.split("<body>")[0]  # plotly.js inline: works offline


def test_reuse_keeps_only_a_run_of_the_same_settings_and_code(tmp_path, monkeypatch):
    """``--reuse`` must not keep a stale run: the key holds the resolved distillation settings (a changed default
    is a changed run), the mode's settings and a fingerprint of the package's code."""
    mode, distill = dict(bench.MODES["smoke"]), dict(bench.DISTILL["smoke"])
    folder = tmp_path / "run_0_distill"
    folder.mkdir()
    (folder / bench.PREDICTIONS_FILE).write_text("subject\n")
    key = bench.settings_key("distill", mode, distill)
    cost = {"seed": 0, "strategy": "distill", "settings": key}
    (folder / "cost.json").write_text(bench.json.dumps(cost))

    def reused():
        return bench.reusable(0, "distill", tmp_path, bench.settings_key("distill", mode, distill))

    assert reused() == cost and bench.reusable(0, "distill", tmp_path, key) == cost
    assert bench.reusable(0, "distill", tmp_path, key + "x") is None  # another key: not this run
    assert bench.settings_key("distill", {**mode, "rounds": mode["rounds"] + 1}, distill) != key
    assert bench.settings_key("distill", mode, {**distill, "steps": 2}) != key
    # the same explicit settings, but a default of DistillSettings changed: not the same run
    fields = bench.dataclasses.fields(bench.DistillSettings)
    changed = next(f for f in fields if f.name not in distill and isinstance(f.default, (int, float)))
    monkeypatch.setattr(bench, "DistillSettings", bench.dataclasses.make_dataclass(
        "DistillSettings", [(f.name, f.type, bench.dataclasses.field(default=f.default + 1 if f is changed
                                                                     else f.default)) for f in fields]))
    assert reused() is None
    monkeypatch.undo()
    monkeypatch.setattr(bench, "source_fingerprint", lambda: "other code")
    assert reused() is None
    monkeypatch.undo()
    (folder / bench.PREDICTIONS_FILE).unlink()  # no predictions: nothing to keep
    assert reused() is None

def test_privacy_audit_script_flags_real_cases_and_summarises_each_initialisation(tmp_path):
    """benchmarks/bench_privacy_audit.py on a smoke benchmark's trained distillation model: one summary row per
    initialisation, every volume audited, and down-sampled real cases flagged."""
    spec = importlib.util.spec_from_file_location("bench_privacy_audit", _PATH.parent / "bench_privacy_audit.py")
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)
    assert bench.main(["--smoke", "--out", str(tmp_path), "--strategies", "distill"]) == 0
    assert audit.recorded_settings(tmp_path / "run_0_distill")["real_batch"] == bench.DISTILL["smoke"]["real_batch"]
    assert audit.main([str(tmp_path), "--seed", "0"]) == 0  # with the settings the run was trained with
    report = pd.read_csv(tmp_path / "privacy_audit_0.csv")
    summary = audit.summarise(report).set_index("init")
    assert list(summary.index) == ["class_stats", "noise", "real_unsafe"]
    assert (summary["volumes"] == summary.loc["real_unsafe", "volumes"]).all() and summary["volumes"].min() > 0
    assert summary.loc["real_unsafe", "flagged"] > 0 and summary.loc["real_unsafe", "nn_corr_max"] > 0.9
    assert summary.loc["noise", "flagged"] == 0
    with pytest.raises(SystemExit):  # no such seed's run: a clear argument error, not a traceback
        audit.main([str(tmp_path), "--seed", "7"])
    with pytest.raises(SystemExit):  # an unknown setting: refused before any work
        audit.main([str(tmp_path), "--seed", "0", "--distill", '{"stpes": 1}'])


def test_a_cohort_made_with_other_settings_or_code_is_refused_not_reused(tmp_path, monkeypatch):
    mode = dict(bench.MODES["smoke"])
    bench.prepare_seed(0, mode, tmp_path)
    assert (tmp_path / "cohort_0" / "bench_cohort.json").is_file()
    bench.prepare_seed(0, mode, tmp_path)  # same settings and code: kept
    with pytest.raises(bench.ConfigError, match="cohort_0: made with other settings or other code"):
        bench.prepare_seed(0, {**mode, "size": mode["size"] + 8}, tmp_path)
    monkeypatch.setattr(bench, "source_fingerprint", lambda: "other code")
    with pytest.raises(bench.ConfigError, match="use another --out"):
        bench.prepare_seed(0, mode, tmp_path)
