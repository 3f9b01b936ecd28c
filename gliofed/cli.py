"""The ``gliofed`` command. User errors print one line (no traceback) and exit non-zero."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gliofed.errors import GliofedError

__all__ = ["main", "build_parser"]


def _cmd_synth(args: argparse.Namespace) -> int:
    from gliofed.data.synth import make_cohort

    make_cohort(args.out, preset=args.preset, seed=args.seed, difficulty=args.difficulty,
                sites=tuple(args.sites.split(",")) if args.sites else None, cases_per_site=args.cases_per_site,
                workers=args.workers)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from gliofed.data.check import check_manifest

    report = check_manifest(args.manifest, workers=args.workers)
    print(report)
    return 0 if report.ok else 1


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from gliofed.data.cache import preprocess

    report = preprocess(args.manifest, args.cache, size=args.size, workers=args.workers)
    print(report)
    return 0


def _cmd_notebooks(args: argparse.Namespace) -> int:
    from gliofed.notebooks import parse_value, run_notebooks

    run_notebooks(args.out, {k: parse_value(v) for k, v in args.parameters or []})
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gliofed.notebooks import NOTEBOOK_DIR, parse_grid, parse_value, sweep

    notebook = Path(args.notebook)
    if not notebook.is_file() and (NOTEBOOK_DIR / notebook.name).is_file():
        notebook = NOTEBOOK_DIR / notebook.name  # "03_evaluation.ipynb" means the shipped notebook
    table = sweep(notebook, parse_grid(args.grid), args.out, {k: parse_value(v) for k, v in args.parameters or []},
                  html=args.html)
    return 1 if (table["status"] == "failed").any() else 0


def _cmd_curate(args: argparse.Namespace) -> int:
    from gliofed.data.sources import curate, merge_manifests

    if args.merge:
        merged, duplicates = merge_manifests(args.merge, args.out)
        print(f"merged {len(args.merge)} manifest(s): {len(merged)} subject(s) from "
              f"{merged['site'].nunique()} site(s); {len(duplicates)} duplicate(s) removed.")
        for row in duplicates.itertuples():
            print(f"  removed {row.subject_id} ({row.file}): {row.reason}")
        print(f"wrote {args.out}")
        return 0
    if not args.source or not args.root:
        from gliofed.errors import ConfigError

        raise ConfigError("gliofed curate needs --source and --root (or --merge a.csv b.csv ...).")
    result = curate(args.source, args.root, args.labels, args.site)
    manifest, report = result.write(args.out)
    print(result)
    print(f"wrote {manifest} and {report}")
    return 0


def _cache_for(manifest: str, cache: str | None, size: int, workers: int):
    """The cache of ``manifest`` (default ``<manifest dir>/cache_<size>``), brought up to date first."""
    from pathlib import Path

    from gliofed.data.cache import preprocess

    cache_dir = Path(cache) if cache else Path(manifest).resolve().parent / f"cache_{size}"
    report = preprocess(manifest, cache_dir, size=size, workers=workers, progress=False)
    if len(report.skipped):
        print(report)
    return cache_dir


def _native_size(manifest: str, largest: int = 128) -> int:
    """The default in-plane size: the smallest in-plane matrix (RAS x, y) of the manifest's cases, at most ``largest``
    (the seed's 128), so that a default never upsamples a cohort."""
    import nibabel as nib

    from gliofed.data.manifest import read_manifest

    smallest = largest
    for path in read_manifest(manifest)["t1"]:
        image = nib.load(path)
        axes = nib.orientations.io_orientation(image.affine)[:, 0].astype(int)  # voxel axis -> world axis
        in_plane = [n for n, world in zip(image.shape[:3], axes) if world in (0, 1)]
        smallest = min(smallest, *in_plane)
    return int(smallest)


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gliofed.experiments import train_and_save
    from gliofed.presets import get_preset

    overrides = {k: v for k, v in dict(epochs=args.epochs, seed=args.seed, device=args.device, lr=args.lr,
                                         batch_size=args.batch_size).items() if v is not None}
    if args.modalities:
        overrides["modalities"] = tuple(args.modalities.split(","))
    preset = get_preset(args.preset)
    config = preset.train.replace(**overrides)
    if args.strategy == "centralized" and args.rounds is None:
        rounds, local_epochs = config.epochs, 1  # one round per epoch: a learning curve for free
    else:
        rounds, local_epochs = args.rounds or 5, args.local_epochs
    size = args.size
    if size is None:
        size = _native_size(args.manifest)
        print(f"in-plane size {size} (the cohort's native size, at most 128; --size changes it)")
    cache_dir = _cache_for(args.manifest, args.cache, size, args.workers)
    distill = {**preset.distill, **{k: v for k, v in dict(n_synthetic=args.synthetic, steps=args.distill_steps,
                                                          init=args.distill_init).items() if v is not None}}
    print(f"{args.strategy}: {rounds} rounds x {local_epochs} local epoch(s), {config.optimizer} lr {config.lr}")
    _, history = train_and_save(args.out, cache_dir, args.strategy, config, rounds, local_epochs=local_epochs,
                                mu=args.mu, distill=distill, external_site=args.external_site,
                                min_sites=args.min_sites, resume=args.resume)
    print(history.to_frame().tail(1).to_string(index=False))
    print(f"saved {Path(args.out) / 'model.safetensors'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    from functools import partial
    from pathlib import Path

    from gliofed.data.dataset import CaseDataset
    from gliofed.engine import predict
    from gliofed.errors import ConfigError
    from gliofed.inference import check_preprocessing, postprocess_mask, predict_cases
    from gliofed.metrics import evaluate_predictions, results_table, segmentation_metrics
    from gliofed.runs import load_checkpoint

    if args.min_component < 0:
        raise ConfigError(f"--min-component must be 0 (off) or a positive number of voxels, not {args.min_component}.")
    model, config, state = load_checkpoint(args.checkpoint)
    size = check_preprocessing(args.checkpoint, state.get("preprocessing"), args.size)  # the model's input size
    if size is None:
        raise ConfigError(f"{args.checkpoint}: the checkpoint records no input size; give --size (the in-plane size "
                          "it was trained at).")
    cache_dir = _cache_for(args.manifest, args.cache, size, args.workers)
    dataset = CaseDataset(cache_dir, split=args.split, modalities=config.modalities, seed=config.seed)
    if not len(dataset):
        raise ConfigError(f"{args.manifest}: no {args.split} cases to evaluate.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cleaning = args.min_component > 0 or args.keep_largest
    postprocess = partial(postprocess_mask, min_voxels=args.min_component, keep_largest=args.keep_largest)
    predictions = predict(model, dataset, device=args.device or "auto", postprocess=postprocess if cleaning else None)
    predictions.to_csv(out / "predictions.csv", index=False)
    tables = evaluate_predictions(predictions, n_boot=args.bootstrap, seed=config.seed)
    table3 = results_table(tables["classification"])
    tables["classification"].to_csv(out / "metrics_classification.csv", index=False)
    tables["segmentation"].to_csv(out / "metrics_segmentation.csv", index=False)
    table3.to_csv(out / "table3.csv")
    summary = {"checkpoint": str(args.checkpoint), "split": args.split, "cases": len(predictions), "size": size,
               "modalities": list(config.modalities),
               "classification": tables["classification"].to_dict(orient="records"),
               "segmentation": tables["segmentation"].to_dict(orient="records")}
    if cleaning:  # reported beside, never instead of, the raw scores
        raw = [f"{m}_{r}" for m in ("dice", "hd95") for r in ("WT", "TC", "ET")]
        cleaned = predictions.drop(columns=raw)
        cleaned = cleaned.rename(columns=lambda c: c.removeprefix("pp_"))
        pp_table = segmentation_metrics(cleaned)
        pp_table.to_csv(out / "metrics_segmentation_postprocessed.csv", index=False)
        summary["postprocessing"] = {"min_voxels": args.min_component, "keep_largest": args.keep_largest}
        summary["segmentation_postprocessed"] = pp_table.to_dict(orient="records")
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    has_masks = bool(predictions["has_mask"].any())
    print(table3.to_string() if len(table3) else f"no marker labels among the {args.split} cases: no classification "
          "metrics")
    print(tables["segmentation"].to_string(index=False) if has_masks else f"no masks among the {args.split} cases: "
          "no segmentation metrics")
    if cleaning and has_masks:
        print(f"post-processed (components < {args.min_component} voxels removed"
              f"{', largest kept' if args.keep_largest else ''}):")
        print(pp_table.to_string(index=False))
    if args.nifti:
        from gliofed.data.manifest import read_manifest

        manifest = read_manifest(args.manifest, strict=False).set_index("subject_id")
        cases = [{"subject_id": s, **manifest.loc[s, ["t1", "t1ce", "t2", "flair"]].to_dict()}
                 for s in dataset.index["subject_id"]]
        predict_cases(args.checkpoint, cases, out / "nifti", size=size, device=args.device or "auto",
                      min_voxels=args.min_component, keep_largest=args.keep_largest, progress=False)
        print(f"wrote {len(cases)} NIfTI mask(s) in the scans' own grids to {out / 'nifti'}")
    print(f"wrote predictions and metrics to {out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from gliofed.data.manifest import MODALITIES
    from gliofed.errors import ConfigError

    given = {m: getattr(args, m) for m in MODALITIES if getattr(args, m)}
    if bool(args.manifest) == bool(given):
        raise ConfigError("gliofed predict needs either --manifest or the scans of one case (--t1 --t1ce --t2 "
                          "--flair), not both.")
    from gliofed.inference import predict_cases, read_cases, subject_name

    if args.manifest:
        cases = read_cases(args.manifest)
    else:
        cases = [{"subject_id": args.subject or subject_name(given.get("flair") or next(iter(given.values()))),
                  **given}]
    table = predict_cases(args.checkpoint, cases, args.out, size=args.size, device=args.device or "auto",
                          min_voxels=args.min_component, keep_largest=args.keep_largest, progress=len(cases) > 1)
    for row in table.itertuples():
        print(f"{row.subject}: {row.seg} (whole tumour {row.volume_WT_ml:.1f} ml), {row.markers}")
    print(f"wrote {len(table)} case(s) to {args.out} (predictions.csv)")
    return 0


def _add_synth(commands) -> None:
    p = commands.add_parser("synth", help="generate the synthetic multi-site cohort")
    p.add_argument("--preset", default="workshop", choices=["tiny", "workshop", "paper"])
    p.add_argument("--out", required=True, help="output folder (receives manifest.csv)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", type=float, default=0.5, help="0 (easy) .. 1 (hard); default 0.5")
    p.add_argument("--sites", help="comma-separated subset of sites (default: all five)")
    p.add_argument("--cases-per-site", type=int, help="override the preset's subjects per site")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_synth)


def _add_check(commands) -> None:
    p = commands.add_parser("check", help="report every problem of a manifest and its files")
    p.add_argument("manifest")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_check)


def _add_curate(commands) -> None:
    p = commands.add_parser("curate", help="build a manifest from a real dataset download, or merge manifests")
    p.add_argument("--source", choices=["brats", "brats2021", "upenn-gbm", "tcga", "rembrandt", "ucsf-pdgm", "egd"])
    p.add_argument("--root", help="the dataset's download folder")
    p.add_argument("--labels", nargs="+", default=[], metavar="FILE",
                   help="label files (CSV / XLSX / JSON tables named in data_manifests/<source>.md)")
    p.add_argument("--site", help="site name for every case (default: the dataset name)")
    p.add_argument("--merge", nargs="+", metavar="CSV", help="merge curated manifests and remove duplicates")
    p.add_argument("--out", required=True, help="manifest to write (the report goes next to it)")
    p.set_defaults(func=_cmd_curate)


def _add_preprocess(commands) -> None:
    p = commands.add_parser("preprocess", help="preprocess a manifest into the case cache")
    p.add_argument("manifest")
    p.add_argument("--cache", required=True, help="cache folder")
    p.add_argument("--size", type=int, default=128, help="in-plane size (default 128, the seed's)")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_preprocess)


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train the multi-task network on a manifest")
    p.add_argument("manifest")
    p.add_argument("--strategy", default="centralized",
                   choices=["centralized", "local", "fedavg", "fedprox", "distill"])
    p.add_argument("--rounds", type=int, help="federated rounds (default 5; centralized: one per epoch)")
    p.add_argument("--local-epochs", type=int, default=1, help="epochs per site per round (default 1)")
    p.add_argument("--mu", type=float, default=0.01, help="FedProx proximal weight (default 0.01)")
    p.add_argument("--synthetic", type=int, help="distill: synthetic volumes per site (default 3)")
    p.add_argument("--distill-steps", type=int, help="distill: condensation steps per round (default 30)")
    p.add_argument("--distill-init", choices=["class_stats", "noise", "real_unsafe"])
    p.add_argument("--min-sites", type=int, default=1, help="a round needs this many valid answers (default 1)")
    p.add_argument("--external-site", help="hold this site out of training entirely")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.safetensors")
    p.add_argument("--preset", default="paper", choices=["paper", "workshop", "tiny"],
                   help="training recipe and distillation effort (default: the seed's, SGD lr 1e-3, 60 epochs)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--modalities", help="comma-separated contrasts, e.g. t1,t2 (default all four)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda ...")
    p.add_argument("--cache", help="cache folder (default <manifest dir>/cache_<size>; refreshed first)")
    p.add_argument("--size", type=int, help="in-plane size (default: the cohort's native size, at most 128)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default="runs/train")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(commands) -> None:
    p = commands.add_parser("evaluate", help="predict and score a checkpoint on a manifest's split")
    p.add_argument("checkpoint")
    p.add_argument("manifest")
    p.add_argument("--split", default="test", choices=["train", "test", "external"])
    p.add_argument("--cache")
    p.add_argument("--size", type=int, help="in-plane size (default: the checkpoint's; another value is refused)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95 %% CIs")
    _add_postprocessing(p)
    p.add_argument("--nifti", action="store_true",
                   help="also write each case's predicted mask as NIfTI in its original grid (OUT/nifti/)")
    p.add_argument("--out", default="runs/evaluate")
    p.set_defaults(func=_cmd_evaluate)


def _add_postprocessing(p) -> None:
    p.add_argument("--min-component", type=int, default=0, metavar="N",
                   help="post-processing: remove tumour components smaller than N voxels (default 0: off)")
    p.add_argument("--keep-largest", action="store_true",
                   help="post-processing: keep only the largest tumour component (default off)")


def _add_predict(commands) -> None:
    p = commands.add_parser("predict", help="segment new patients' NIfTI scans and predict their markers")
    p.add_argument("checkpoint", help="model.safetensors (with model.json beside it) or a run folder")
    for modality in ("t1", "t1ce", "t2", "flair"):
        p.add_argument(f"--{modality}", metavar="NIFTI", help=f"the case's {modality.upper()} scan")
    p.add_argument("--subject", help="case name for the outputs (default: from the FLAIR file name)")
    p.add_argument("--manifest", help="many cases: a CSV with subject_id and t1, t1ce, t2, flair path columns")
    p.add_argument("--out", required=True, help="folder for <subject>_seg.nii.gz, <subject>_markers.json and "
                   "predictions.csv")
    p.add_argument("--size", type=int, help="in-plane size (default: the checkpoint's; another value is refused)")
    p.add_argument("--device", help="auto (default), cpu, cuda ...")
    _add_postprocessing(p)
    p.set_defaults(func=_cmd_predict)


def _add_notebooks(commands) -> None:
    p = commands.add_parser("notebooks", help="execute the ordered notebooks with papermill")
    sub = p.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run notebooks/01_... onwards in order")
    run.add_argument("--out", default="runs/notebooks", help="folder for executed notebooks and HTML")
    run.add_argument("-p", "--parameter", nargs=2, action="append", dest="parameters", metavar=("KEY", "VALUE"))
    run.set_defaults(func=_cmd_notebooks)


def _add_sweep(commands) -> None:
    p = commands.add_parser("sweep", help="run one notebook over a parameter grid and collect the results")
    p.add_argument("notebook", help="path, or the name of a shipped notebook (e.g. 03_evaluation.ipynb)")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=a,b",
                   help="parameter values to sweep (repeat for a cartesian grid)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", dest="parameters", metavar=("KEY", "VALUE"),
                   help="a fixed parameter for every run")
    p.add_argument("--out", default="runs/sweep", help="one folder per run plus sweep.csv")
    p.add_argument("--html", action="store_true", help="also export each executed notebook as HTML")
    p.set_defaults(func=_cmd_sweep)


#: one function per subcommand, in the order ``gliofed --help`` lists them
_SUBCOMMANDS = (_add_synth, _add_check, _add_curate, _add_preprocess, _add_train, _add_evaluate, _add_predict,
                _add_notebooks, _add_sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gliofed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gliofed`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GliofedError as error:
        print(f"gliofed: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
