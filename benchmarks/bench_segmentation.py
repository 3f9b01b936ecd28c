"""What each change to the segmentation bought (issue 27): region-based training, the poly learning-rate schedule,
sliding-window inference, test-time flips and post-processing chosen on training cases, over several seeds.

For every seed a synthetic cohort of the chosen preset is drawn anew (``make_cohort(seed=...)``: new subjects, new
split) and preprocessed at ``--size`` (default 32², as ``bench_strategies.py``: a CPU budget). Each *training
variant* trains the centralized model the way ``gliofed train`` does (:func:`gliofed.experiments.train_and_save`: one
round per epoch, the preset's recipe):

* ``baseline``: the preset's recipe as it was (softmax over the four classes, constant learning rate);
* ``regions``: a sigmoid per nested region WT, TC, ET (Dice + BCE), the seed's network otherwise;
* ``poly``: nnU-Net's poly learning-rate schedule;
* ``regions+poly``: both.

Every trained model is then scored on the test split (Dice per region, mean over test cases with a mask; HD95 in mm,
median over cases where both masks are non-empty) with each *inference variant*:

* ``one pass``: the whole preprocessed grid in one pass (the default);
* ``flips``: test-time left-right flip averaged in;
* ``window``: sliding windows of (all slices) x W x W voxels, W = 2/3 of the grid, Gaussian weighting, overlap 0.5;
* ``post-processing``: one pass, then the component filter the run chose on its training split.

The seed is the unit of replication: the tables give, per variant and region, the mean over seeds with a 95 %
t-interval, and the paired difference against the baseline (per seed, then mean and t-interval over seeds). The claim
and decision rule were written before the run (``benchmarks/PREREGISTRATION.md``, issue 27).

Resumable: every (seed, training variant) keeps its run folder and a results file under ``--work``; a rerun skips
what is done. Deterministic (fixed seeds, CPU), so valid under load; it records no timings.

Usage:
  python benchmarks/bench_segmentation.py                    # 3 seeds, workshop cohort at 32², 10 epochs (~30 min CPU)
  python benchmarks/bench_segmentation.py --smoke            # tiny preset, 1 seed, 1 epoch (minutes; checks the script)
  python benchmarks/bench_segmentation.py --report-only      # tables from the results already there
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
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
from gliofed.engine import predict  # noqa: E402
from gliofed.experiments import train_and_save  # noqa: E402
from gliofed.presets import get_preset  # noqa: E402
from gliofed.runs import load_checkpoint  # noqa: E402
from gliofed.segmentation import SegmentationInference, postprocess_mask  # noqa: E402

#: training variant -> changes to the preset's recipe
TRAINING = {  # explicit: the presets' own schedule became poly after this benchmark (issue 27, rule 2)
    "baseline": {"lr_schedule": "constant"},
    "regions": {"model": {"seg_output": "regions"}, "lr_schedule": "constant"},
    "poly": {"lr_schedule": "poly"},
    "regions+poly": {"model": {"seg_output": "regions"}, "lr_schedule": "poly"},
}
INFERENCE = ("one pass", "flips", "window", "post-processing")
REGIONS = ("WT", "TC", "ET")
#: benchmark seeds: fresh, never used while building these changes
SEEDS = (2701, 2702, 2703)


def t_interval(values) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of per-seed values (NaN interval for one seed)."""
    from scipy import stats

    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return (math.nan,) * 3
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def cohort(work: Path, preset: str, seed: int, cases_per_site: int | None, size: int) -> Path:
    """The seed's cohort and its cache at ``size`` (made once)."""
    folder = work / f"seed{seed}"
    manifest = folder / "cohort" / "manifest.csv"
    if not manifest.is_file():
        make_cohort(folder / "cohort", preset=preset, seed=seed, cases_per_site=cases_per_site, progress=False,
                    verbose=False)
    cache = folder / f"cache_{size}"
    preprocess(manifest, cache, size=size, progress=False)
    return cache


def scores(predictions: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    masked = predictions[predictions["has_mask"].astype(bool)]
    out = {}
    for region in REGIONS:
        out[f"dice_{region}"] = float(masked[f"{prefix}dice_{region}"].mean())
        out[f"hd95_{region}"] = float(masked[f"{prefix}hd95_{region}"].median())
    out["test_cases_with_mask"] = int(len(masked))
    return out


def run_variant(work: Path, cache: Path, preset: str, seed: int, variant: str, epochs: int) -> dict:
    """Train one variant (or reuse its run) and score it with every inference variant; returns the results record."""
    folder = work / f"seed{seed}" / variant.replace("+", "_")
    done = folder / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    base = get_preset(preset).train
    changes = dict(TRAINING[variant])
    model_options = {**base.model, **changes.pop("model", {})}
    config = base.replace(seed=seed, epochs=epochs, device="cpu", model=model_options, **changes)
    run = folder / "run"
    if not (run / "model.safetensors").is_file():
        train_and_save(run, cache, "centralized", config, epochs, local_epochs=1, progress=False)
    model, config, state = load_checkpoint(run)
    test = CaseDataset(cache, split="test", modalities=config.modalities, seed=config.seed)
    chosen = state["extra"]["postprocessing"]
    grid = int(test.index["height"].iloc[0])
    window = max(8, (2 * grid // 3) // 8 * 8)
    record = {"seed": seed, "variant": variant, "config": config.to_dict(), "postprocessing": {
        k: chosen[k] for k in ("min_voxels", "keep_largest", "cases")}, "window": window, "inference": {}}
    cleaning = chosen["min_voxels"] > 0 or chosen["keep_largest"]
    for name, inference in (("one pass", SegmentationInference()),
                            ("flips", SegmentationInference(flips=(2,))),
                            ("window", SegmentationInference(window=(-1, window, window)))):
        post = None
        if name == "one pass" and cleaning:
            def post(labels, chosen=chosen):
                return postprocess_mask(labels, chosen["min_voxels"], chosen["keep_largest"])
        predictions = predict(model, test, device="cpu", progress=False, postprocess=post, inference=inference)
        record["inference"][name] = scores(predictions)
        if name == "one pass":
            record["inference"]["post-processing"] = scores(predictions, "pp_") if cleaning else dict(
                record["inference"]["one pass"])
    done.write_text(json.dumps(record, indent=1))
    return record


def per_seed_table(records: list[dict]) -> pd.DataFrame:
    rows = []
    for record in records:
        for inference, values in record["inference"].items():
            rows.append({"seed": record["seed"], "training": record["variant"], "inference": inference,
                         "min_voxels": record["postprocessing"]["min_voxels"],
                         "keep_largest": record["postprocessing"]["keep_largest"], **values})
    return pd.DataFrame(rows)


def summary_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per (training, inference) and metric: mean over seeds with a 95 % t-interval, and the paired difference against
    the baseline trained and scored in one pass."""
    base = per_seed[(per_seed["training"] == "baseline") & (per_seed["inference"] == "one pass")].set_index("seed")
    rows = []
    for (training, inference), group in per_seed.groupby(["training", "inference"], sort=False):
        group = group.set_index("seed")
        row = {"training": training, "inference": inference, "seeds": len(group)}
        for metric in [f"{m}_{r}" for m in ("dice", "hd95") for r in REGIONS]:
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = t_interval(group[metric])
            common = group.index.intersection(base.index)
            delta = group.loc[common, metric] - base.loc[common, metric]
            row[f"delta_{metric}"], row[f"delta_{metric}_low"], row[f"delta_{metric}_high"] = t_interval(delta)
            row[f"delta_{metric}_seeds_up"] = int((delta > 0).sum()) if metric.startswith("dice") else int(
                (delta < 0).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame, header: str) -> str:
    def cell(row, metric, digits=2):
        value, low, high = row[metric], row[f"{metric}_low"], row[f"{metric}_high"]
        if not np.isfinite(value):
            return "–"
        if not np.isfinite(low):
            return f"{value:.{digits}f}"
        return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    lines = [header, "", "| training | inference | Dice WT | Dice TC | Dice ET | HD95 WT (mm) | ΔDice WT | ΔDice TC | "
             "ΔDice ET | ΔHD95 WT (mm) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary.to_dict("records"):
        deltas = []
        for metric in ("dice_WT", "dice_TC", "dice_ET", "hd95_WT"):
            value = cell(row, f"delta_{metric}")
            seeds_up = row[f"delta_{metric}_seeds_up"]
            better = "up" if metric.startswith("dice") else "down"
            deltas.append(f"{value if value != '–' else '–'} ({seeds_up}/{row['seeds']} {better})"
                          if not (row["training"] == "baseline" and row["inference"] == "one pass") else "—")
        lines.append(f"| {row['training']} | {row['inference']} | {cell(row, 'dice_WT')} | {cell(row, 'dice_TC')} | "
                     f"{cell(row, 'dice_ET')} | {cell(row, 'hd95_WT', 1)} | " + " | ".join(deltas) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench_segmentation", help="cohorts, caches, runs and results files")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the result CSVs")
    parser.add_argument("--preset", default="workshop", choices=["tiny", "workshop", "paper"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=32, help="in-plane cache size (default 32, as bench_strategies)")
    parser.add_argument("--cases-per-site", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=list(TRAINING), choices=list(TRAINING))
    parser.add_argument("--smoke", action="store_true", help="tiny preset, one seed, one epoch")
    parser.add_argument("--report-only", action="store_true", help="only the tables of the results already there")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.seeds, args.epochs, args.size = "tiny", args.seeds[:1], 1, get_preset("tiny").cache_size
    torch.set_num_threads(args.threads)
    work = Path(args.work) / args.preset
    work.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in args.seeds:
        cache = None
        for variant in args.variants:
            done = work / f"seed{seed}" / variant.replace("+", "_") / "results.json"
            if args.report_only:
                if done.is_file():
                    records.append(json.loads(done.read_text()))
                continue
            cache = cache or cohort(work, args.preset, seed, args.cases_per_site, args.size)
            print(f"{dt.datetime.now():%H:%M:%S} seed {seed} {variant}", flush=True)
            records.append(run_variant(work, cache, args.preset, seed, variant, args.epochs))
    if not records:
        print("no results yet")
        return 1
    per_seed = per_seed_table(records)
    summary = summary_table(per_seed)
    name = f"segmentation_{args.preset}" + ("_smoke" if args.smoke else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed.to_csv(out / f"{name}_per_seed.csv", index=False)
    summary.to_csv(out / f"{name}_summary.csv", index=False)
    header = (f"Preset `{args.preset}` (cohort redrawn per seed, cache {args.size}², "
              f"centralized, {args.epochs} epochs, the preset's recipe otherwise), seeds "
              f"{', '.join(map(str, sorted(per_seed['seed'].unique())))}. Device: CPU ({platform.machine()}), "
              f"{args.threads} torch thread(s). Date: {dt.date.today():%Y-%m-%d}. Mean over seeds [95 % t-interval]; "
              "Δ: paired difference against the baseline in one pass, and in how many seeds it went the better way.")
    table = markdown(summary, header)
    (out / f"{name}_table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
