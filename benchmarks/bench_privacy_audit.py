"""The privacy audit of a strategy benchmark's trained distillation model: what each site would upload, judged
inside the site, for each initialisation.

Reads ``run_<seed>_distill`` (the trained model: its last round's state) and ``cache_<seed>`` from a
``bench_strategies.py`` output folder, asks every site to condense under that model with the benchmark's
distillation settings and each initialisation (``class_stats``: the shipped default; ``noise``; ``real_unsafe``:
down-sampled real cases, which the audit must flag), and reports per initialisation how many synthetic volumes
were flagged, the range of their nearest-real correlations, the highest one's site, nearest subject and
percentile, and the sites' thresholds.

Usage:
  python benchmarks/bench_privacy_audit.py runs/bench_strategies --seed 0
  python benchmarks/bench_privacy_audit.py runs/bench_strategies --seed 0 --distill '{"steps": 0}'

The distillation settings are those the run was trained with (its ``cost.json``); ``--distill`` changes some.

Writes ``privacy_audit_<seed>.csv`` (every volume's row) into the benchmark folder and prints the summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from gliofed.errors import GliofedError  # noqa: E402

INITS = ("class_stats", "noise", "real_unsafe")


def summarise(report: pd.DataFrame) -> pd.DataFrame:
    """One row per initialisation: flagged / volumes, correlation range, the highest volume and the thresholds."""
    rows = []
    for init, group in report.groupby("init", sort=False):
        top = group.loc[group["nn_corr"].idxmax()]
        rows.append({"init": init, "flagged": int(group["flagged"].sum()), "volumes": len(group),
                     "nn_corr_min": float(group["nn_corr"].min()), "nn_corr_max": float(group["nn_corr"].max()),
                     "highest_site": top["site"], "highest_nearest": top["nn_subject"],
                     "highest_percentile": float(top["percentile"]), "highest_threshold": float(top["threshold"]),
                     "threshold_min": float(group["threshold"].min()),
                     "threshold_max": float(group["threshold"].max())})
    return pd.DataFrame(rows)


def recorded_settings(run: Path) -> dict | None:
    """The distillation settings ``run`` was trained with, as ``bench_strategies.py`` recorded them in its
    ``cost.json`` (None where it holds none)."""
    try:
        settings = json.loads(json.loads((run / "cost.json").read_text())["settings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    distill = settings.get("distill") if isinstance(settings, dict) else None
    return dict(distill) if isinstance(distill, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, help="a bench_strategies.py output folder")
    parser.add_argument("--seed", type=int, default=0, help="which seed's trained distillation model (default 0)")
    parser.add_argument("--distill", default=None,
                        help="distillation settings as JSON, merged into those the run was trained with (its "
                             "cost.json)")
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    args = parser.parse_args(argv)
    run, cache = args.bench / f"run_{args.seed}_distill", args.bench / f"cache_{args.seed}"
    for folder in (run, cache):
        if not folder.is_dir():
            parser.error(f"{folder}: not found; run bench_strategies.py with seed {args.seed} first")
    spec = importlib.util.spec_from_file_location("bench_strategies", ROOT / "benchmarks" / "bench_strategies.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    distill = recorded_settings(run)
    if distill is None:
        distill = dict(bench.DISTILL["full"])
        print(f"{run / 'cost.json'} records no distillation settings: auditing with the full benchmark's "
              f"{json.dumps(distill, sort_keys=True)}", file=sys.stderr)
    try:
        distill = bench.merged_distill(distill, args.distill)
    except GliofedError as error:
        parser.error(str(error))

    from gliofed.config import TrainConfig
    from gliofed.experiments.privacy import privacy_audit
    from gliofed.model import build_model
    from gliofed.runs import TrainingRun

    started = time.perf_counter()
    try:
        # the benchmark keeps each run's last round (state.safetensors + state.json), not a final model file
        state = TrainingRun(run).load_state()
        config = TrainConfig.from_dict(state["config"])
        model = build_model(config)
        model.load_state_dict(state["model"])
        report = privacy_audit(cache, model.eval(), config, distill=distill, inits=tuple(args.inits),
                               seed=args.seed)
    except GliofedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report.to_csv(args.bench / f"privacy_audit_{args.seed}.csv", index=False)
    summary = summarise(report)
    pd.set_option("display.width", 200)
    print(f"privacy audit of {run} (settings {json.dumps(distill, sort_keys=True)}), "
          f"{(time.perf_counter() - started) / 60:.1f} min")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
