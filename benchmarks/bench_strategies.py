"""Five ways of training on the same sites, over several seeds: accuracy, bytes and site compute, with CIs.

For every seed the synthetic benchmark cohort is drawn anew (``make_cohort(seed=...)``: new subjects, new
split), preprocessed, and every strategy (centralized, local, fedavg, fedprox, distill) is trained on it with the
same settings. Each strategy's final model is scored on the test split twice:

* ``truth``: against the cohort's hidden true labels (``truth.csv``), every test case labelled;
* ``manifest``: against the manifest's partially known labels (unknown ones ignored), as a user would.

Per strategy and metric (AUC IDH, 1p/19q, MGMT, grade; Dice WT, TC, ET; mean marker AUC = mean of IDH, 1p/19q
and grade) the table gives the mean over seeds with a 95 % t-interval over seeds; paired differences against
FedAvg, centralized and local-only are paired over seeds (mean difference, 95 % t-interval over seeds, paired
t-test: the seed is the unit of replication, :mod:`gliofed.experiments.stats`); beside them, as a scoring-noise
figure only, a paired bootstrap over test cases (resampled within each seed, averaged over seeds). Dice is the
mean over test cases with a mask. Local-only is the mean of the site models' scores (as in the simulator).

Also per strategy: bytes up and down per client-round (measured on the serialised payloads), the site compute
time per round (mean over sites and rounds of the time a site takes to answer), and the distillation upload at
the seed's full-size model and input (4 x 155 x 128 x 128), measured on a serialised payload of that shape.

Outputs (``--out``, default ``runs/bench_strategies``): ``per_seed.csv`` (one row per seed, strategy, label
source, metric), ``summary.csv``, ``differences.csv``, ``table.md`` (for RESULTS.md, with device and date) and
``pareto.html`` (accuracy against upload bytes; plotly.js inline, works offline).

Usage:
  python benchmarks/bench_strategies.py                 # the CPU benchmark (3 seeds, ~30-35 min on 2 idle cores)
  python benchmarks/bench_strategies.py --quick         # 1 seed, fedavg + distill, 2 rounds (< 5 min)
  python benchmarks/bench_strategies.py --smoke         # tiny cohort, small model, 1 round (the test's setting)
  python benchmarks/bench_strategies.py --gpu           # larger setting for a lent GPU
  python benchmarks/bench_strategies.py --tiny-round    # one round of each strategy on tiny (timing row)
  python benchmarks/bench_strategies.py --paper-subset  # the paper preset on 60 subjects at 128 x 128, 2 rounds, GPU
                                                        # (benchmarks/gpu_check.sh runs it)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from gliofed.data.cache import preprocess  # noqa: E402
from gliofed.data.dataset import CaseDataset  # noqa: E402
from gliofed.data.synth import make_cohort  # noqa: E402
from gliofed.errors import ConfigError  # noqa: E402
from gliofed.experiments import stats  # noqa: E402
from gliofed.experiments.comparison import build_sites  # noqa: E402
from gliofed.experiments.study import (  # noqa: E402
    LABELS,
    METRICS,
    score,  # noqa: F401  (re-exported: callers score one model's predictions with it)
    score_models,
    seed_differences,
    with_labels,
)
from gliofed.federated.protocol import DistillSettings  # noqa: E402
from gliofed.federated.server.strategies import STRATEGIES, make_strategy  # noqa: E402
from gliofed.federated.simulate import simulate  # noqa: E402
from gliofed.presets import train_preset  # noqa: E402
from gliofed.provenance import sources_fingerprint  # noqa: E402
from gliofed.runs import TrainingRun  # noqa: E402
from gliofed.vocab import MARKERS  # noqa: E402

PREDICTIONS_FILE = TrainingRun.PREDICTIONS

FULL_SIZE = (4, 155, 128, 128)

#: settings per mode: cohort preset, subjects per site, cache size, seeds, rounds, strategies, model, device
MODES: dict[str, dict] = {
    "full": dict(preset="workshop", cases_per_site=24, size=32, seeds=(0, 1, 2), rounds=6,
                 strategies=STRATEGIES, small_model=False, device="cpu", n_boot=2000),
    "quick": dict(preset="workshop", cases_per_site=12, size=32, seeds=(0,), rounds=2,
                  strategies=("fedavg", "distill"), small_model=False, device="cpu", n_boot=500),
    "smoke": dict(preset="tiny", cases_per_site=None, size=24, seeds=(0,), rounds=1,
                  strategies=("fedavg", "distill"), small_model=True, device="cpu", n_boot=100),
    "gpu": dict(preset="workshop", cases_per_site=None, size=48, seeds=(0, 1, 2, 3, 4), rounds=12,
                strategies=STRATEGIES, small_model=False, device="cuda", n_boot=2000),
    # issue 12 point 5: one round of every strategy on the tiny cohort at its own cache size (32), 2 threads
    "tiny_round": dict(preset="tiny", cases_per_site=None, size=32, seeds=(0,), rounds=1,
                       strategies=STRATEGIES, small_model=False, device="cpu", n_boot=100, threads=2),
    # issue 26: the paper preset end to end on a subset (12 subjects per site, the seed's 128 x 128), for a GPU check;
    # the cohort is drawn and preprocessed by every CPU core
    "paper_subset": dict(preset="paper", cases_per_site=12, size=128, seeds=(0,), rounds=2, strategies=STRATEGIES,
                         small_model=False, device="cuda", n_boot=200, workers=os.cpu_count() or 1),
}
#: distillation settings per mode (the benchmark's; the CPU modes use the workshop preset's effort)
DISTILL: dict[str, dict] = {
    "full": {"steps": 5, "server_epochs": 10, "real_batch": 12},  # the workshop preset's distillation effort
    "quick": {"steps": 5, "server_epochs": 10, "real_batch": 12},
    "smoke": {"steps": 1, "server_epochs": 1, "real_batch": 4},
    "gpu": {"steps": 30, "server_epochs": 10},
    "tiny_round": {"steps": 2, "server_epochs": 2},  # the tiny preset's
    "paper_subset": {},  # the paper preset's (DistillSettings' defaults)
}


class TimedSite:
    """A :class:`~gliofed.federated.site.Site` whose training / distillation answers are timed (the simulator needs
    only ``name``, ``handle`` and ``raw_bytes``)."""

    def __init__(self, site) -> None:
        self.site, self.name, self.seconds = site, site.name, []

    def handle(self, task, model, settings):
        started = time.perf_counter()
        try:
            return self.site.handle(task, model, settings)
        finally:
            if task in ("train", "distill"):  # not the centralized baseline's size enquiry
                self.seconds.append(time.perf_counter() - started)

    def raw_bytes(self) -> int:
        return self.site.raw_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval over seeds (NaN bounds for a single seed): :func:`gliofed.experiments.stats.t_interval`
    as a tuple."""
    interval = stats.t_interval(values)
    return interval.mean, interval.lo, interval.hi


def paired_differences(per_seed: dict[int, dict[str, pd.DataFrame]], a: str, b: str, n_boot: int,
                       seed: int = 0) -> list[dict]:
    """Paired bootstrap of ``a - b`` for every metric: test cases resampled within each seed (the same cases for
    both strategies), the per-seed difference averaged over seeds. Returns one row per metric: mean difference,
    95 % percentile interval and the share of resamples with ``a <= b``."""
    rng = np.random.default_rng(seed)
    seeds = [s for s in sorted(per_seed) if a in per_seed[s] and b in per_seed[s]]
    if not seeds:
        return []
    sizes = {s: per_seed[s][a]["subject"].nunique() for s in seeds}
    observed = {m: [] for m in METRICS}
    for s in seeds:
        sa, sb = score_models(per_seed[s][a]), score_models(per_seed[s][b])
        for m in METRICS:
            observed[m].append(sa[m] - sb[m])
    draws = {m: [] for m in METRICS}
    for _ in range(n_boot):
        diffs = {m: [] for m in METRICS}
        for s in seeds:
            rows = rng.integers(0, sizes[s], sizes[s])
            sa, sb = score_models(per_seed[s][a], rows), score_models(per_seed[s][b], rows)
            for m in METRICS:
                diffs[m].append(sa[m] - sb[m])
        for m in METRICS:
            values = [d for d in diffs[m] if np.isfinite(d)]
            if values:
                draws[m].append(float(np.mean(values)))
    out = []
    for m in METRICS:
        d = np.asarray(draws[m])
        obs = [v for v in observed[m] if np.isfinite(v)]
        out.append({"a": a, "b": b, "metric": m, "diff": float(np.mean(obs)) if obs else float("nan"),
                    "lo": float(np.quantile(d, 0.025)) if len(d) else float("nan"),
                    "hi": float(np.quantile(d, 0.975)) if len(d) else float("nan"),
                    "p_a_le_b": float((d <= 0).mean()) if len(d) else float("nan")})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------


def full_size_upload_bytes(distill: dict) -> dict[str, int]:
    """Bytes of one FedAvg upload and one distillation upload at the seed's full-size model and input
    (4 x 155 x 128 x 128, one site): serialised payloads of exactly those shapes (the serialisation is
    uncompressed, so the bytes do not depend on the values)."""
    from gliofed.federated.protocol.payload import Payload, state_to_arrays
    from gliofed.federated.site.condense import build_payload
    from gliofed.model import MultiTaskUNet
    from gliofed.vocab import MARKER_CLASSES

    settings = DistillSettings(**distill)
    model = MultiTaskUNet()
    fedavg = Payload("weights_update", state_to_arrays(model),
                     {"site": "s0", "n_cases": 1, "n_masked": 1, "n_labelled": {m: 1 for m in MARKERS}, "loss": 0.0})
    shape = FULL_SIZE[1:]
    low = tuple(max(2, math.ceil(s / settings.scale)) for s in shape)
    n = settings.n_synthetic
    bn = {k: v.numpy() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    tables = {m: np.zeros((len(c), len(c)), np.float32) for m, c in MARKER_CLASSES.items()}
    counts = {m: np.zeros(len(c), np.int64) for m, c in MARKER_CLASSES.items()}
    distilled = build_payload(torch.zeros(n, FULL_SIZE[0], *low), torch.zeros(n, *low, dtype=torch.uint8),
                              np.zeros((n, 4), np.int64), tables, counts, bn,
                              {"site": "s0", "n_cases": 1, "shape": list(shape), "scale": settings.scale,
                               "init": settings.init, "temperature": settings.temperature})
    return {"fedavg": fedavg.nbytes, "distill": distilled.nbytes}


def prepare_seed(seed: int, mode: dict, work: Path) -> None:
    """Draw the cohort of ``seed`` (new subjects, new split) and preprocess it (both skipped when present and made
    with the same settings and code: ``bench_cohort.json``; a cohort made otherwise is an error, never reused).

    Raises:
        ConfigError: ``work`` holds a cohort of this seed made with other settings or code, or by hand."""
    cohort, cache = work / f"cohort_{seed}", work / f"cache_{seed}"
    stamp = json.dumps({"seed": seed, "preset": mode["preset"], "cases_per_site": mode["cases_per_site"],
                        "size": mode["size"], "code": source_fingerprint()}, sort_keys=True)
    stamp_file = cohort / "bench_cohort.json"
    if cohort.exists() or cache.exists():
        if not stamp_file.is_file() or stamp_file.read_text() != stamp:
            raise ConfigError(f"{cohort}: made with other settings or other code than this run's (see "
                              f"{stamp_file.name}); use another --out, or delete {cohort} and {cache}.")
    else:
        make_cohort(cohort, preset=mode["preset"], seed=seed, cases_per_site=mode["cases_per_site"],
                    workers=mode.get("workers", 1), progress=False, verbose=False)
        stamp_file.write_text(stamp)
    preprocess(cohort / "manifest.csv", cache, size=mode["size"], workers=mode.get("workers", 1), progress=False)


def run_one(seed: int, name: str, mode: dict, distill: dict, work: str, key: str) -> dict:
    """Train strategy ``name`` on the prepared cohort of ``seed``; its test predictions go to the run folder.
    Returns the cost row (bytes, compute time; ``key``: :func:`settings_key`, taken when the benchmark started).
    Runs in a worker process when ``--jobs`` > 1."""
    torch.set_num_threads(mode.get("threads", 1) if mode["device"] == "cpu" else torch.get_num_threads())
    work = Path(work)
    cache = work / f"cache_{seed}"
    overrides = {"device": mode["device"], "seed": seed}
    if mode["small_model"]:
        overrides["model"] = {"features": (4, 8, 16, 32), "hidden": 8}
    config = train_preset(mode["preset"], **overrides)
    test = CaseDataset(cache, split="test", modalities=config.modalities, seed=seed)
    strategy = make_strategy(name, 1, 0.01, distill, seed)
    strategy.evaluate_each_round = False  # score only the final model: the benchmark's cost is training
    sites = [TimedSite(site) for site in build_sites(cache, strategy, config)]
    started = time.perf_counter()
    _, history = simulate(strategy, sites, test, config, mode["rounds"],
                          checkpoint_dir=work / f"run_{seed}_{name}", progress=False)
    wall = time.perf_counter() - started
    rounds = len(history.rounds)
    # per client (the sites in the round's byte counts) and round
    up = [sum(r["bytes_up"].values()) / max(len(r["bytes_up"]), 1) for r in history.rounds]
    down = [sum(r["bytes_down"].values()) / max(len(r["bytes_down"]), 1) for r in history.rounds]
    site_seconds = [t for s in sites for t in s.seconds]
    pooled = [t for s in sites if s.name == "pooled" for t in s.seconds]  # centralized: the data centre
    cost = {"seed": seed, "strategy": name, "rounds": rounds, "wall_s": wall,
            "bytes_up_per_client_round": float(np.mean(up)), "bytes_down_per_client_round": float(np.mean(down)),
            "site_s_per_round": float(np.mean(site_seconds)) if site_seconds else float("nan"),
            "server_s_per_round": float(np.mean(pooled)) if pooled else float("nan"),
            "settings": key}
    (work / f"run_{seed}_{name}" / "cost.json").write_text(json.dumps(cost))
    return cost


def reusable(seed: int, name: str, work: Path, key: str) -> dict | None:
    """The cost row of an earlier run of ``seed`` and strategy ``name`` whose predictions exist and whose settings
    key (:func:`settings_key`) is ``key``, else None."""
    folder = work / f"run_{seed}_{name}"
    if not ((folder / "cost.json").is_file() and (folder / PREDICTIONS_FILE).is_file()):
        return None
    cost = json.loads((folder / "cost.json").read_text())
    return cost if cost.get("settings") == key else None


def merged_distill(base: dict, text: str | None) -> dict:
    """``base`` with the settings of the JSON object ``text`` (a ``--distill`` option) merged in, checked by
    :class:`DistillSettings` before any work.

    Raises:
        ConfigError: ``text`` is not a JSON object, or names an unknown or invalid setting (one line)."""
    distill = dict(base)
    if not text:
        return distill
    try:
        extra = json.loads(text)
        if not isinstance(extra, dict):
            raise ValueError("not a JSON object")
        DistillSettings(**{**distill, **extra})  # unknown or invalid settings fail here, before any work
    except (ValueError, TypeError, ConfigError) as error:
        raise ConfigError(f"--distill {text!r}: {error}") from None
    distill.update(extra)
    return distill


def source_fingerprint() -> str:
    """:func:`gliofed.provenance.sources_fingerprint` of the package and this script: a run made by other code, or
    in another environment, is never reused."""
    return sources_fingerprint([__file__])


def settings_key(name: str, mode: dict, distill: dict) -> str:
    """What makes two runs of one seed and strategy the same run: the mode's settings, the distillation settings
    as resolved (every field, defaults included, so a changed default is a changed run) and the code."""
    resolved = dataclasses.asdict(DistillSettings(**distill)) if name == "distill" else None
    keep = {key: value for key, value in mode.items() if key not in ("seeds", "strategies", "n_boot")}
    return json.dumps({"mode": keep, "distill": resolved, "code": source_fingerprint()}, sort_keys=True,
                      default=str)


def _cell(mean: float, lo: float, hi: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.2f}" if not np.isfinite(lo) else f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def _bytes(value: float) -> str:
    if not np.isfinite(value) or value == 0:
        return "0"
    return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"


def summarise(per_seed_rows: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (source, strategy), group in per_seed_rows.groupby(["labels", "strategy"], sort=False):
        row = {"labels": source, "strategy": strategy, "seeds": group["seed"].nunique()}
        for m in METRICS:
            mean, lo, hi = t_interval(group[m].tolist())
            row.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi})
        cost = costs[costs["strategy"] == strategy]
        for key in ("bytes_up_per_client_round", "bytes_down_per_client_round", "site_s_per_round",
                    "server_s_per_round", "wall_s"):
            row[key] = float(cost[key].mean())  # pandas skips NaN: a run whose time was not recorded
        rows.append(row)
    return pd.DataFrame(rows)


def seed_level(per_seed_rows: pd.DataFrame, case_bootstrap: pd.DataFrame) -> pd.DataFrame:
    """The pairs of ``case_bootstrap`` (:func:`paired_differences` rows) compared over seeds (true labels):
    ``diff``, ``lo``, ``hi``, ``t``, ``p``, ``n``, ``verdict`` from the paired t-test over seeds, with the case
    bootstrap's interval kept as ``case_lo``, ``case_hi`` (scoring noise)."""
    if case_bootstrap.empty:
        return case_bootstrap
    pairs = list(dict.fromkeys(map(tuple, case_bootstrap[["a", "b"]].to_numpy())))
    rows = per_seed_rows[per_seed_rows["labels"] == "truth"].rename(columns={"strategy": "arm"})
    seeds = seed_differences(rows, pairs, METRICS)[["a", "b", "metric", "diff", "lo", "hi", "t", "p", "n", "verdict"]]
    cases = case_bootstrap.rename(columns={"diff": "case_diff", "lo": "case_lo", "hi": "case_hi"})
    return seeds.merge(cases[["a", "b", "metric", "case_lo", "case_hi"]], on=["a", "b", "metric"], how="left")


def markdown(summary: pd.DataFrame, differences: pd.DataFrame, uploads: dict, mode_name: str, mode: dict,
             distill: dict, device: str, elapsed: float, jobs: int = 1) -> str:
    date = dt.date.today().isoformat()
    lines = [f"Benchmark `{mode_name}`: cohort preset `{mode['preset']}`"
             f" ({mode['cases_per_site'] or 'preset'} subjects per site, redrawn per seed), cache {mode['size']}x"
             f"{mode['size']}, seeds {', '.join(map(str, mode['seeds']))}, {mode['rounds']} rounds x 1 local epoch,"
             f" FedProx mu 0.01, distillation {json.dumps(distill)}. Device: {device}. Date: {date}."
             f" Whole run: {elapsed / 60:.1f} min ({jobs} parallel process(es)).", ""]
    for source, title in (("truth", "hidden true labels (`truth.csv`), every test case labelled"),
                          ("manifest", "the manifest's known labels only")):
        part = summary[summary["labels"] == source]
        lines += [f"**Scored with {title}** — mean over seeds [95 % t-interval over seeds; with {len(mode['seeds'])}"
                  " seeds it is wide and may pass 0 or 1]; Dice = mean over masked test cases; mean marker AUC ="
                  " mean of IDH, 1p/19q, grade:", ""]
        header = ["strategy", *(LABELS[m] for m in METRICS)]
        if source == "truth":
            header += ["up / client-round", "down / client-round", "site s / round"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in part.iterrows():
            cells = [r["strategy"], *(_cell(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) for m in METRICS)]
            if source == "truth":
                up = ("pooled cases once: " if r["strategy"] == "centralized" else "") + _bytes(
                    r["bytes_up_per_client_round"] * (mode["rounds"] if r["strategy"] == "centralized" else 1))
                compute = (f"{r['server_s_per_round']:.1f} (server, pooled)" if r["strategy"] == "centralized"
                           else f"{r['site_s_per_round']:.1f}")
                cells += [up, _bytes(r["bytes_down_per_client_round"]), compute]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if len(differences):
        lines += ["**Paired differences over seeds** (true labels; mean of the per-seed differences [95 % t-interval"
                  " over seeds]; * = interval excludes 0; with few seeds it is wide). The paired bootstrap over test"
                  " cases in `differences.csv` (`case_lo`, `case_hi`) is scoring noise only, not a comparison:", ""]
        header = ["a − b", *(LABELS[m] for m in METRICS)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (a, b), group in differences.groupby(["a", "b"], sort=False):
            group = group.set_index("metric")
            cells = []
            for m in METRICS:
                d = group.loc[m]
                star = "*" if np.isfinite(d["lo"]) and (d["lo"] > 0 or d["hi"] < 0) else ""
                cells.append("–" if not np.isfinite(d["diff"]) else f"{d['diff']:+.2f}" if not np.isfinite(d["lo"])
                              else f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]{star}")
            lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Upload per client-round at the seed's full-size model and input (4x155x128x128, serialised payloads):"
                 f" FedAvg {uploads['fedavg']:,} B, distillation {uploads['distill']:,} B"
                 f" ({100 * uploads['distill'] / uploads['fedavg']:.1f} % of FedAvg).")
    truth = summary[summary["labels"] == "truth"].set_index("strategy")
    if {"distill", "fedavg"} <= set(truth.index):
        def ratio(metric: str) -> float:
            reference = truth.loc["fedavg", metric]
            return 100 * truth.loc["distill", metric] / reference if reference > 0 else float("nan")

        ratio_auc, ratio_wt = ratio("auc_mean"), ratio("dice_WT")
        lines.append(f"Distillation / FedAvg (true labels, mean over seeds): mean marker AUC {ratio_auc:.1f} %,"
                     f" Dice WT {ratio_wt:.1f} % (targets: >= 95 %).")
    return "\n".join(lines) + "\n"


def pareto_figure(summary: pd.DataFrame, path: Path, title: str) -> None:
    """Accuracy (mean marker AUC and Dice WT, true labels) against upload bytes per client-round; offline HTML."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    part = summary[summary["labels"] == "truth"]
    figure = make_subplots(rows=1, cols=2, subplot_titles=("mean marker AUC (IDH, 1p/19q, grade)", "Dice WT"))
    for col, metric in ((1, "auc_mean"), (2, "dice_WT")):
        for _, r in part.iterrows():
            x = max(float(r["bytes_up_per_client_round"]), 1.0)  # local-only uploads nothing: drawn at 1 byte
            err = [r[f"{metric}_hi"] - r[metric]] if np.isfinite(r[f"{metric}_hi"]) else None
            err_minus = [r[metric] - r[f"{metric}_lo"]] if np.isfinite(r[f"{metric}_lo"]) else None
            figure.add_trace(go.Scatter(x=[x], y=[r[metric]], mode="markers+text", text=[r["strategy"]],
                                        textposition="top center", name=r["strategy"], showlegend=col == 1,
                                        error_y=dict(type="data", array=err, arrayminus=err_minus,
                                                     visible=err is not None)),
                             row=1, col=col)
        figure.update_xaxes(type="log", title_text="bytes up per client-round (log; local-only at 1)", row=1, col=col)
    figure.update_layout(title=title, height=480, width=1100)
    tmp = path.with_suffix(".tmp.html")
    figure.write_html(tmp, include_plotlyjs=True, full_html=True)
    tmp.replace(path)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp.csv")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


MODE_FLAGS = ("quick", "smoke", "gpu", "tiny_round", "paper_subset")


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by ``gpu_check.py --dry-run`` to check the arguments it will pass)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    for name in MODE_FLAGS:
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_true", help=f"the {name} setting")
    parser.add_argument("--out", default="runs/bench_strategies", help="output folder (cohorts, caches, runs, tables)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the mode's seeds")
    parser.add_argument("--rounds", type=int, help="override the mode's rounds")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, help="override the mode's strategies")
    parser.add_argument("--jobs", type=int, default=1,
                        help="(seed, strategy) runs in parallel processes, one torch thread each (default 1)")
    parser.add_argument("--n-boot", type=int, help="override the mode's bootstrap resamples")
    parser.add_argument("--reuse", action="store_true",
                        help="keep earlier runs in --out with the same seed, strategy and settings")
    parser.add_argument("--device-name", default=None, help="device description for the table (default: detected)")
    parser.add_argument("--distill", default=None, metavar="JSON",
                        help='override distillation settings, e.g. \'{"steps": 20}\' (merged into the mode\'s)')
    parser.add_argument("--cases-per-site", type=int, help="override the mode's subjects per site")
    parser.add_argument("--device", help="override the mode's device")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mode_name = next((n for n in MODE_FLAGS if getattr(args, n)), "full")
    mode = dict(MODES[mode_name])
    if args.seeds:
        mode["seeds"] = tuple(args.seeds)
    if args.rounds:
        mode["rounds"] = args.rounds
    if args.strategies:
        mode["strategies"] = tuple(args.strategies)
    if args.n_boot:
        mode["n_boot"] = args.n_boot
    if args.cases_per_site:
        mode["cases_per_site"] = args.cases_per_site
    if args.device:
        mode["device"] = args.device
    try:
        distill = merged_distill(DISTILL[mode_name], args.distill)
    except ConfigError as error:
        parser.error(str(error))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    started = time.perf_counter()
    for seed in mode["seeds"]:
        try:
            prepare_seed(seed, mode, out)
        except ConfigError as error:
            parser.error(str(error))
    # longest first (distillation, then local-only), so that parallel workers finish together
    order = {"distill": 0, "local": 1}
    tasks = sorted(((seed, name) for seed in mode["seeds"] for name in mode["strategies"]),
                   key=lambda task: (order.get(task[1], 2), task[0]))
    costs = []
    # what identifies a run, taken once, now: an edit made while the benchmark runs does not relabel its runs
    keys = {name: settings_key(name, mode, distill) for name in mode["strategies"]}
    if args.reuse:  # runs of the same seed, strategy and settings already in --out are kept
        kept = [(task, reusable(*task, out, keys[task[1]])) for task in tasks]
        costs = [cost for _, cost in kept if cost is not None]
        tasks = [task for task, cost in kept if cost is None]
        log(f"reusing {len(costs)} earlier runs; running {len(tasks)}")

    def done(cost: dict) -> None:
        costs.append(cost)
        log(f"seed {cost['seed']} {cost['strategy']}: {cost['wall_s']:.1f} s")

    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_one, seed, name, mode, distill, str(out), keys[name])
                       for seed, name in tasks]
            for future in as_completed(futures):
                done(future.result())
    else:
        for seed, name in tasks:
            done(run_one(seed, name, mode, distill, str(out), keys[name]))
    per_seed: dict[int, dict[str, pd.DataFrame]] = {}
    rows = []
    for seed in mode["seeds"]:
        truth = pd.read_csv(out / f"cohort_{seed}" / "truth.csv")
        per_seed[seed] = {}
        for name in mode["strategies"]:
            predictions = pd.read_csv(out / f"run_{seed}_{name}" / PREDICTIONS_FILE)
            per_seed[seed][name] = with_labels(predictions, truth)
            for source, frame in (("truth", per_seed[seed][name]), ("manifest", predictions)):
                rows.append({"seed": seed, "strategy": name, "labels": source, **score_models(frame)})
    per_seed_rows, cost_frame = pd.DataFrame(rows), pd.DataFrame(costs)
    summary = summarise(per_seed_rows, cost_frame)
    differences = []
    paired = set()  # each pair once: a against FedAvg, centralized, then local-only
    for reference in ("fedavg", "centralized", "local"):
        for name in mode["strategies"]:
            if name != reference and reference in mode["strategies"] and frozenset((name, reference)) not in paired:
                paired.add(frozenset((name, reference)))
                differences += paired_differences(per_seed, name, reference, mode["n_boot"])
    differences = seed_level(per_seed_rows, pd.DataFrame(differences))
    uploads = full_size_upload_bytes(distill)
    device = args.device_name or (torch.cuda.get_device_name() if mode["device"] == "cuda"
                                  else f"CPU ({platform.machine()}), {mode.get('threads', 1)} torch thread(s) per run")
    elapsed = time.perf_counter() - started
    _write_csv(per_seed_rows.merge(cost_frame, on=["seed", "strategy"]), out / "per_seed.csv")
    _write_csv(summary, out / "summary.csv")
    _write_csv(differences, out / "differences.csv")
    table = markdown(summary, differences, uploads, mode_name, mode, distill, device, elapsed, args.jobs)
    (out / "table.md").write_text(table)
    pareto_figure(summary, out / "pareto.html",
                  f"gliofed strategies, {mode_name} benchmark ({len(mode['seeds'])} seeds)")
    print(table)
    log(f"done in {elapsed / 60:.1f} min; outputs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
