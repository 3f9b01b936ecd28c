"""Privacy-utility curves (issue 30): accuracy against epsilon, and against the measured membership TPR, for FedAvg
trained by DP-SGD and for distillation with its summaries released through the Gaussian mechanism.

Per seed (the benchmark cohorts of ``bench_membership.py``: workshop preset, 24 subjects per site, cache 32 x 32),
every setting trains from scratch over all five sites for ``rounds`` rounds through the simulator (the same Site,
policy and strategy code as any run) and is scored on the common test split:

- ``fedavg`` with the seed's network (BatchNorm, no DP) and with GroupNorm and no DP: the references;
- ``fedavg`` + DP-SGD (GroupNorm) at each noise multiplier of ``fedavg_sigmas`` (clipping norm 1);
- ``distill`` at the benchmark's effort without DP, and with the Gaussian mechanism on its summaries at each noise
  multiplier of ``distill_sigmas``.

epsilon is what the sites' accountant (Opacus RDP) reports after the last round (the largest over sites), at
delta 1e-5. The membership TPR at 1 % FPR beside each point comes from ``bench_membership.py``'s summary where the
same noise multiplier was attacked (``--membership``); blank where it was not.

Resumable: one JSON per (setting, seed) in ``--out``. Writes ``privacy_utility.csv`` (one row per setting and seed),
``privacy_utility_summary.csv`` (mean and 95 % t-interval over seeds) and ``privacy_utility.html`` (two panels:
accuracy against epsilon and against TPR; plotly.js inline).

Usage:
  nice -n 10 python benchmarks/bench_privacy_utility.py > utility.log 2>&1 &
  python benchmarks/bench_privacy_utility.py --mode smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (ROOT, HERE):
    if str(path) not in sys.path:  # run as a script from a checkout
        sys.path.insert(0, str(path))

import bench_membership  # noqa: E402

from gliofed.dp import DPSettings  # noqa: E402
from gliofed.experiments.comparison import run_experiment  # noqa: E402
from gliofed.fileio import atomic_write_text  # noqa: E402
from gliofed.presets import train_preset  # noqa: E402

MODES: dict[str, dict] = {
    "full": dict(cohort="full", seeds=(0, 1, 2), rounds=3, fedavg_sigmas=(0.5, 1.0, 2.0), distill_sigmas=(0.5, 2.0),
                 max_norm=1.0, small_model=False),
    "smoke": dict(cohort="smoke", seeds=(0,), rounds=1, fedavg_sigmas=(1.0,), distill_sigmas=(1.0,), max_norm=1.0,
                  small_model=True),
}
HEADLINE = ("auc_idh", "auc_codeletion", "auc_grade")
DELTA = 1e-5


def settings(mode: dict) -> list[dict]:
    """Every (strategy, norm, mechanism, noise multiplier) the mode trains."""
    rows = [dict(strategy="fedavg", norm="batch", mechanism="off", noise_multiplier=0.0),
            dict(strategy="fedavg", norm="group", mechanism="off", noise_multiplier=0.0)]
    rows += [dict(strategy="fedavg", norm="group", mechanism="dp_sgd", noise_multiplier=s)
             for s in mode["fedavg_sigmas"]]
    rows += [dict(strategy="distill", norm="batch", mechanism="off", noise_multiplier=0.0)]
    rows += [dict(strategy="distill", norm="batch", mechanism="gaussian", noise_multiplier=s)
             for s in mode["distill_sigmas"]]
    return rows


def run_setting(setting: dict, seed: int, mode: dict, cohort_mode: dict, work: Path) -> dict:
    path = work / f"utility_{setting['strategy']}_{setting['norm']}_{setting['mechanism']}_" \
                  f"{setting['noise_multiplier']:g}_{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    cache = bench_membership.prepare_cohort(seed, cohort_mode, work)
    model = {"features": (4, 8, 16, 32), "hidden": 8} if mode["small_model"] else {}
    config = train_preset(cohort_mode["preset"], device="cpu", seed=seed, model={**model, "norm": setting["norm"]})
    dp = None
    if setting["mechanism"] != "off":
        dp = DPSettings(setting["mechanism"], noise_multiplier=setting["noise_multiplier"], max_norm=mode["max_norm"],
                        delta=DELTA)
    started = time.perf_counter()
    _, history = run_experiment(cache, setting["strategy"], config, mode["rounds"], distill=cohort_mode["distill"],
                                progress=False, dp=dp)
    last = history.rounds[-1]
    spent = [float((entry or {}).get("epsilon_total", math.nan))
             for entry in (last["info"].get("dp") or {}).values()]
    row = {**setting, "seed": seed, "rounds": mode["rounds"], "delta": DELTA,
           "epsilon": max(spent) if spent else (math.inf if dp is None else math.nan),
           **{k: float(v) for k, v in last["metrics"].items() if isinstance(v, (int, float))},
           "wall_s": time.perf_counter() - started}
    row["auc_mean"] = float(np.nanmean([row.get(k, np.nan) for k in HEADLINE]))
    atomic_write_text(path, json.dumps(row))
    return row


def t_interval(values) -> tuple[float, float, float]:
    from scipy import stats

    values = np.asarray([v for v in values if np.isfinite(v)], float)
    if not values.size:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


def summarise(rows: pd.DataFrame, membership: pd.DataFrame | None) -> pd.DataFrame:
    keys = ["strategy", "norm", "mechanism", "noise_multiplier"]
    out = []
    for key, group in rows.groupby(keys, sort=False):
        row = dict(zip(keys, key))
        for metric in ("auc_mean", "dice_WT", "epsilon"):
            row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = t_interval(group[metric])
        row["seeds"] = len(group)
        out.append(row)
    table = pd.DataFrame(out)
    table["tpr@0.01"] = np.nan
    if membership is not None:
        for i, row in table.iterrows():
            if row["strategy"] == "fedavg" and row["norm"] == "group":
                sigma = row["noise_multiplier"] if row["mechanism"] == "dp_sgd" else 0.0
                hit = membership[(membership["strategy"] == "fedavg_dp_sgd")
                                 & np.isclose(membership["noise_multiplier"], sigma)]
            elif row["strategy"] == "fedavg" and row["mechanism"] == "off":
                hit = membership[(membership["strategy"] == "fedavg") & (membership["target"] == "update")]
            elif row["strategy"] == "distill" and row["mechanism"] == "off":
                hit = membership[(membership["strategy"] == "distill") & (membership["target"] == "payload")]
            elif row["strategy"] == "distill" and row["mechanism"] == "gaussian" and "noise_multiplier" in membership:
                hit = membership[(membership["strategy"] == "distill_gaussian") & (membership["target"] == "payload")
                                 & np.isclose(membership["noise_multiplier"], row["noise_multiplier"])]
            else:
                hit = membership.iloc[0:0]
            if len(hit):
                table.loc[i, ["tpr@0.01", "tpr@0.01_lo", "tpr@0.01_hi"]] = \
                    hit.iloc[0][["tpr@0.01", "tpr@0.01_lo", "tpr@0.01_hi"]].to_numpy(float)
    return table


def figure(table: pd.DataFrame, path: Path, title: str) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean marker AUC against epsilon (log)",
                                                        "mean marker AUC against membership TPR at 1 % FPR"))
    for (strategy, norm), group in table.groupby(["strategy", "norm"], sort=False):
        group = group.sort_values("noise_multiplier")
        name = f"{strategy} ({norm}norm)"
        eps = group["epsilon"].replace(np.inf, np.nan)
        fig.add_trace(go.Scatter(x=eps, y=group["auc_mean"], mode="lines+markers", name=name,
                                 text=[f"z={z:g}" for z in group["noise_multiplier"]]), row=1, col=1)
        fig.add_trace(go.Scatter(x=group["tpr@0.01"], y=group["auc_mean"], mode="markers", name=name,
                                 showlegend=False), row=1, col=2)
    fig.update_xaxes(type="log", row=1, col=1)
    fig.add_vline(x=0.01, line_dash="dot", row=1, col=2)
    fig.update_layout(title=title)
    fig.write_html(path, include_plotlyjs=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_membership",
                        help="work folder (default: bench_membership's, whose cohorts it reuses)")
    parser.add_argument("--membership", type=Path, default=None,
                        help="bench_membership.py's leakage CSV (default: <out>/leakage_all.csv when present)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--strategies", nargs="+", choices=("fedavg", "distill"), default=("fedavg", "distill"),
                        help="which curves (default both)")
    args = parser.parse_args(argv)
    mode = dict(MODES[args.mode])
    if args.seeds:
        mode["seeds"] = tuple(args.seeds)
    cohort_mode = bench_membership.MODES[mode["cohort"]]
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for setting in [s for s in settings(mode) if s["strategy"] in args.strategies]:  # a setting's seeds first
        for seed in mode["seeds"]:
            started = time.perf_counter()
            rows.append(run_setting(setting, seed, mode, cohort_mode, args.out))
            bench_membership.log(f"{setting} seed {seed}: auc_mean {rows[-1]['auc_mean']:.3f}, epsilon "
                                 f"{rows[-1]['epsilon']:.3g} ({time.perf_counter() - started:.0f} s)")
    frame = pd.DataFrame(rows)
    frame["device"] = f"CPU ({platform.machine()}), {args.threads} thread(s), shared 2-core machine"
    frame["date"] = dt.date.today().isoformat()
    frame.to_csv(args.out / "privacy_utility.csv", index=False)
    membership_csv = args.membership or args.out / "leakage_all.csv"
    membership = pd.read_csv(membership_csv) if membership_csv.is_file() else None
    table = summarise(frame, membership)
    table.to_csv(args.out / "privacy_utility_summary.csv", index=False)
    figure(table, args.out / "privacy_utility.html", f"privacy-utility, {args.mode} ({len(mode['seeds'])} seeds)")
    pd.set_option("display.width", 220)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
