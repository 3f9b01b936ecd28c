"""The seeded strategy benchmark's results, read from its CSV files and rendered as the text notebooks and the README
state: the table of means with intervals over seeds, which paired differences are shown and which are not, and the
site-compute ratios that make a demo's budget fair. Nothing here types a number: change the CSVs and the text follows.

The CSVs are ``benchmarks/results/strategies_{summary,differences,per_seed}.csv`` (written by
``benchmarks/bench_strategies.py``), shipped inside the package as ``gliofed/benchmark_results/`` (a link to that
folder in a checkout, a copy in a wheel).

What is rendered is configured by :data:`TABLE_COLUMNS` and :data:`CLAIM_METRICS` (CSV column -> words), so a
benchmark that adds or renames a column is one entry away:

>>> print(benchmark_markdown())                  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gliofed.errors import ConfigError

__all__ = ["RESULTS_DIR", "TABLE_COLUMNS", "CLAIM_METRICS", "STRATEGY_NAMES", "Benchmark", "load_benchmark",
           "benchmark_table", "benchmark_claims", "benchmark_markdown", "site_compute_ratios", "matched_local_epochs",
           "compare_with_benchmark"]

#: the benchmark's CSV files as shipped with the package
RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmark_results"
#: summary column -> table heading, in order; ``<column>_lo`` / ``<column>_hi`` give its interval where present
TABLE_COLUMNS = {
    "auc_mean": "mean marker AUC (IDH, 1p/19q, grade)",
    "dice_WT": "Dice WT",
    "dice_TC": "Dice TC",
    "bytes_up_per_client_round": "upload per site and round",
    "site_s_per_round": "site compute per round (s)",
}
#: differences metric -> words, for the claims
CLAIM_METRICS = {"auc_mean": "mean marker AUC", "auc_idh": "IDH AUC", "auc_codeletion": "1p/19q AUC",
                 "auc_mgmt": "MGMT AUC", "auc_grade": "grade AUC", "dice_WT": "whole-tumour Dice",
                 "dice_TC": "tumour-core Dice", "dice_ET": "enhancing-tumour Dice"}
#: strategy -> display name
STRATEGY_NAMES = {"centralized": "centralized", "local": "local only", "fedavg": "FedAvg", "fedprox": "FedProx",
                  "distill": "distillation"}


@dataclass
class Benchmark:
    """The three tables of one benchmark run.

    Attributes:
        summary: one row per label source and strategy: means and ``_lo``/``_hi`` intervals over seeds, costs.
        differences: one row per pair and metric: ``a``, ``b``, ``metric``, ``diff``, ``lo``, ``hi`` (paired).
        per_seed: one row per seed, strategy and label source, with the run's ``settings`` (JSON).
        folder: where they were read from.
    """

    summary: pd.DataFrame
    differences: pd.DataFrame
    per_seed: pd.DataFrame
    folder: Path

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.per_seed["seed"].unique())

    @property
    def settings(self) -> dict:
        """The benchmark's recorded mode (preset, rounds, cache size ...), from its per-seed rows."""
        if "settings" not in self.per_seed or not len(self.per_seed):
            return {}
        return (json.loads(self.per_seed["settings"].iloc[0]) or {}).get("mode", {})


def load_benchmark(folder: str | Path | None = None) -> Benchmark:
    """Read the benchmark's CSVs (default: the ones shipped with gliofed, :data:`RESULTS_DIR`).

    Raises:
        ConfigError: a file is missing or lacks the columns the rendering needs.
    """
    folder = Path(folder) if folder is not None else RESULTS_DIR
    tables = {}
    for name, needed in (("summary", {"labels", "strategy"}), ("differences", {"a", "b", "metric", "diff", "lo", "hi"}),
                         ("per_seed", {"seed", "strategy"})):
        path = folder / f"strategies_{name}.csv"
        if not path.is_file():
            raise ConfigError(f"{path}: benchmark results not found (run benchmarks/bench_strategies.py, or reinstall "
                              "gliofed, which ships them).")
        table = pd.read_csv(path)
        missing = needed - set(table.columns)
        if missing:
            raise ConfigError(f"{path}: lacks column(s) {', '.join(sorted(missing))}.")
        tables[name] = table
    return Benchmark(tables["summary"], tables["differences"], tables["per_seed"], folder)


def _format_bytes(value: float) -> str:
    if not np.isfinite(value) or value == 0:
        return "nothing" if value == 0 else ""
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def benchmark_table(benchmark: Benchmark | None = None, columns: dict[str, str] | None = None,
                    labels: str = "truth") -> pd.DataFrame:
    """The benchmark's table: one row per strategy, each column ``mean [low, high]`` over seeds (bytes and seconds
    as plain means).

    Args:
        benchmark: default :func:`load_benchmark`.
        columns: summary column -> heading (default :data:`TABLE_COLUMNS`); a column the CSV lacks is left out.
        labels: which label source the scores use (``truth``: the cohort's hidden true labels; ``manifest``).
    """
    benchmark = benchmark or load_benchmark()
    columns = columns or TABLE_COLUMNS
    summary = benchmark.summary[benchmark.summary["labels"] == labels]
    rows = {}
    for record in summary.to_dict(orient="records"):
        row = {}
        for column, heading in columns.items():
            if column not in record:
                continue
            value = float(record[column])
            if column.startswith("bytes"):
                text = _format_bytes(value)
            elif column.endswith("_s_per_round"):
                text = f"{value:.1f}" if np.isfinite(value) else ""
            elif f"{column}_lo" in record:
                text = f"{value:.2f} [{float(record[column + '_lo']):.2f}, {float(record[column + '_hi']):.2f}]"
            else:
                text = f"{value:.2f}"
            row[heading] = text
        rows[STRATEGY_NAMES.get(record["strategy"], record["strategy"])] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("strategy")


def benchmark_claims(benchmark: Benchmark | None = None, metrics: dict[str, str] | None = None) -> pd.DataFrame:
    """Every paired difference of the benchmark's strategy pairs, taken over **seeds** (each seed a new cohort and
    training run: the unit of replication; :func:`gliofed.experiments.study.seed_differences`, true labels), with its
    verdict: ``shown`` when the 95 % paired t-interval excludes 0, ``not shown`` when it contains 0 (then no order
    is claimed). The case bootstrap of ``strategies_differences.csv`` measures scoring noise only and is not used.

    Returns:
        ``a``, ``b``, ``metric`` (words), ``diff``, ``lo``, ``hi``, ``n`` (seeds), ``verdict``, ``sentence``.
    """
    from gliofed.experiments.study import seed_differences

    benchmark = benchmark or load_benchmark()
    metrics = metrics or CLAIM_METRICS
    per_seed = benchmark.per_seed.rename(columns={"strategy": "arm"})
    per_seed = per_seed[per_seed["labels"] == "truth"] if "labels" in per_seed else per_seed.assign(labels="truth")
    pairs = list(dict.fromkeys(map(tuple, benchmark.differences[["a", "b"]].to_numpy().tolist())))
    differences = seed_differences(per_seed, pairs, [m for m in metrics if m in per_seed])
    rows = []
    for r in differences.itertuples():
        a, b = STRATEGY_NAMES.get(r.a, r.a), STRATEGY_NAMES.get(r.b, r.b)
        shown = r.lo > 0 or r.hi < 0
        interval = f"{r.diff:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}] over {r.n} seeds"
        if shown:
            sentence = f"{a} {'beats' if r.diff > 0 else 'loses to'} {b} on {metrics[r.metric]} ({interval})"
        else:
            sentence = f"{a} against {b} on {metrics[r.metric]}: not shown ({interval}, the interval contains 0)"
        rows.append({"a": r.a, "b": r.b, "metric": metrics[r.metric], "diff": r.diff, "lo": r.lo, "hi": r.hi,
                     "n": r.n, "verdict": "shown" if shown else "not shown", "sentence": sentence})
    return pd.DataFrame(rows, columns=["a", "b", "metric", "diff", "lo", "hi", "n", "verdict", "sentence"])


def _markdown_table(frame: pd.DataFrame) -> str:
    frame = frame.reset_index()
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def benchmark_markdown(benchmark: Benchmark | None = None, pairs: list[tuple[str, str]] | None = None,
                       claim_metrics: tuple[str, ...] = ("auc_mean", "dice_WT", "dice_TC")) -> str:
    """The benchmark as a notebook states it: what was run, the table, then the differences that are shown and
    those that are not (an interval straddling 0 is "not shown", never an order).

    Args:
        benchmark: default :func:`load_benchmark`.
        pairs: (a, b) pairs to state (default: every pair in the differences file).
        claim_metrics: difference metrics to state (default mean marker AUC, Dice WT and TC).
    """
    benchmark = benchmark or load_benchmark()
    mode = benchmark.settings
    setting = ", ".join(f"{k} {v}" for k, v in mode.items() if k in ("preset", "cases_per_site", "size", "rounds",
                                                                       "device"))
    text = [f"**The seeded benchmark** (`benchmarks/bench_strategies.py`; {len(benchmark.seeds)} seeds, each a new "
            f"cohort; {setting}). Mean over seeds [95 % interval over seeds], scored against the cohort's true labels:",
            "", _markdown_table(benchmark_table(benchmark)), ""]
    claims = benchmark_claims(benchmark, {m: CLAIM_METRICS[m] for m in claim_metrics if m in CLAIM_METRICS})
    if pairs is not None:
        wanted = {tuple(p) for p in pairs}
        claims = claims[[(a, b) in wanted for a, b in zip(claims["a"], claims["b"])]]
    shown, unshown = claims[claims["verdict"] == "shown"], claims[claims["verdict"] == "not shown"]
    text.append("Paired differences over seeds (each seed a new cohort and training run), **shown** where the 95 % "
                "paired t-interval excludes 0:")
    text += [f"- {s}" for s in shown["sentence"]] or ["- none"]
    text += ["", "**Not shown**, so no order is claimed:"]
    text += [f"- {s}" for s in unshown["sentence"]] or ["- none"]
    return "\n".join(text)


def site_compute_ratios(benchmark: Benchmark | None = None, reference: str = "distill",
                        labels: str = "truth") -> pd.Series:
    """Each strategy's site compute per round divided into the ``reference`` strategy's (from the benchmark's
    ``site_s_per_round``): how many local epochs of that strategy cost what one round of the reference costs."""
    benchmark = benchmark or load_benchmark()
    summary = benchmark.summary[benchmark.summary["labels"] == labels].set_index("strategy")["site_s_per_round"]
    if reference not in summary.index or not np.isfinite(summary[reference]):
        raise ConfigError(f"{benchmark.folder}: the benchmark has no site compute for {reference}.")
    return (summary[reference] / summary).dropna()


def matched_local_epochs(strategies: list[str], local_epochs: int = 1, reference: str = "distill",
                         benchmark: Benchmark | None = None) -> dict[str, int]:
    """Local epochs per strategy that give each about the site compute per round of ``reference`` (which keeps
    ``local_epochs``), from :func:`site_compute_ratios`: a fair budget for a comparison that trains each strategy
    once. Centralized, local-only, FedAvg and FedProx train on the same cases per epoch, so they get FedAvg's ratio.

    Args:
        strategies: the strategies to train.
        local_epochs: the reference strategy's epochs per round (default 1).
        reference: whose site compute the others match (default distillation, the most expensive per round).
        benchmark: default :func:`load_benchmark`.

    Returns:
        strategy -> local epochs per round (at least ``local_epochs``).
    """
    ratios = site_compute_ratios(benchmark, reference)
    per_epoch = ratios.get("fedavg", np.nan)
    epochs = {}
    for name in strategies:
        ratio = 1.0 if name == reference else ratios.get(name if name in ("fedavg", "fedprox") else "fedavg", per_epoch)
        matched = int(round(local_epochs * float(ratio))) if np.isfinite(ratio) else local_epochs
        epochs[name] = max(local_epochs, matched)
    return epochs


def compare_with_benchmark(history: pd.DataFrame, metric: str = "dice_WT", benchmark: Benchmark | None = None,
                           labels: str = "truth") -> pd.DataFrame:
    """This run's last-round ``metric`` per strategy beside the benchmark's mean and interval over seeds, and whether
    it falls inside that interval.

    Args:
        history: concatenated ``History.to_frame()`` tables (columns ``strategy``, ``round``, ``metric``).
        metric: a summary column with ``_lo``/``_hi`` (default ``dice_WT``).
    """
    benchmark = benchmark or load_benchmark()
    summary = benchmark.summary[benchmark.summary["labels"] == labels].set_index("strategy")
    rows = []
    for name, group in history.groupby("strategy", sort=False):
        value = float(group.sort_values("round")[metric].iloc[-1])
        if name not in summary.index:
            continue
        lo, hi = float(summary.loc[name, f"{metric}_lo"]), float(summary.loc[name, f"{metric}_hi"])
        rows.append({"strategy": name, f"this run's {metric}": round(value, 3),
                     "benchmark mean": round(float(summary.loc[name, metric]), 3),
                     "benchmark interval": f"[{lo:.2f}, {hi:.2f}]", "inside": bool(lo <= value <= hi)})
    return pd.DataFrame(rows).set_index("strategy")
