"""The ``gliofed`` command. User errors print one line (no traceback) and exit non-zero.

Every argument is checked before any work and before the heavy imports (torch, MONAI): ``--help`` and argument
errors return at once; the commands import what they need inside their ``_cmd_*`` function.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gliofed.errors import ConfigError, GliofedError, ManifestError

__all__ = ["main", "build_parser", "check_arguments"]

#: device strings torch understands that gliofed supports
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


# argument types: a bad value is an argparse error (one line, exit 2) -------------------------------------------------
def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return positive_float(text)


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {text!r}")
    return value


def device_name(text: str) -> str:
    """argparse type: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (whether it exists is checked before the
    work starts)."""
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    return text


# checks before any work ------------------------------------------------------------------------------------------
def _manifest_rows(path: str) -> list[dict[str, str]]:
    """The rows of a manifest CSV (cheap: no pandas); a missing, unreadable or empty manifest is an error."""
    manifest = Path(path)
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: manifest file not found.")
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"{manifest}: manifest cannot be read ({error}).") from None
    if not rows:
        raise ManifestError(f"{manifest}: manifest has no subjects (no rows under its header).")
    return rows


def writable_folder(path: str | Path, what: str = "output folder") -> Path:
    """``path`` if it is, or can be created as, a folder this process can write into; else a one-line error.
    Writes and removes a probe file in the nearest existing folder: permission bits do not tell (root, read-only
    mounts)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: the {what} is a file, not a folder.")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{folder}: cannot create the {what} because {existing} is a file.")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".gliofed-write-test-"):
            pass
    except OSError as error:
        raise ConfigError(f"{folder}: the {what} is not writable ({error.strerror or error}).") from None
    return folder


def _writable_file(path: str | Path, what: str) -> None:
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{target}: the {what} is a folder, not a file.")
    writable_folder(target.parent, f"folder of the {what}")


def check_arguments(args: argparse.Namespace) -> None:
    """Everything about the arguments that can be checked without reading images or importing torch: files that
    must exist, manifests that must have subjects, output folders that must be writable, ``--min-sites`` against
    the manifest's sites. Raises a :class:`~gliofed.errors.GliofedError` (one line)."""
    command = args.command
    if command == "evaluate":
        checkpoint = Path(args.checkpoint)
        if not checkpoint.is_file():
            raise ConfigError(f"{checkpoint}: checkpoint not found.")
    rows = _manifest_rows(args.manifest) if command in ("check", "preprocess", "train", "evaluate") else None
    if command == "preprocess":
        writable_folder(args.cache, "cache folder")
    if command in ("train", "evaluate") and args.cache:
        writable_folder(args.cache, "cache folder")
    if command in ("synth", "train", "evaluate", "sweep") or (command == "notebooks" and hasattr(args, "out")):
        writable_folder(args.out)
    if command == "curate":
        _writable_file(args.out, "manifest to write")
    if command == "train":
        sites = {row.get("site", "") for row in rows} - {args.external_site, "", None}
        if args.strategy != "centralized" and args.min_sites > len(sites):
            raise ConfigError(f"--min-sites {args.min_sites} is more than the {len(sites)} training site(s) in "
                              f"{args.manifest}.")
        if args.preset is None:  # a damaged cohort.json is reported now, not after preprocessing
            from gliofed.presets import cohort_preset

            cohort_preset(args.manifest)
        if args.distill_init == "real_unsafe" and not args.allow_real_init:
            raise ConfigError("--distill-init real_unsafe copies patients into the uploads; every simulated site "
                              "refuses it unless you, as their operator, also pass --allow-real-init.")


def _cmd_synth(args: argparse.Namespace) -> int:
    from gliofed.data.synth import make_cohort

    make_cohort(args.out, preset=args.preset, seed=args.seed, difficulty=args.difficulty,
                sites=tuple(args.sites.split(",")) if args.sites else None, cases_per_site=args.cases_per_site,
                workers=args.workers, cues=args.cues)
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
        raise ConfigError("gliofed curate needs --source and --root (or --merge a.csv b.csv ...).")
    result = curate(args.source, args.root, args.labels, args.site)
    manifest, report = result.write(args.out)
    print(result)
    print(f"wrote {manifest} and {report}")
    return 0


def _cache_for(manifest: str, cache: str | None, size: int, workers: int):
    """The cache of ``manifest`` (default ``<manifest dir>/cache_<size>``), brought up to date first."""
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


def _train_preset_name(args: argparse.Namespace) -> str:
    """``--preset``, else the preset a synthetic cohort was made with (its ``cohort.json``), else ``paper``."""
    if args.preset:
        return args.preset
    from gliofed.presets import COHORT_FILE, cohort_preset

    name = cohort_preset(args.manifest)
    if name:
        print(f"preset {name} (the synthetic cohort's, from {Path(args.manifest).parent / COHORT_FILE};"
              " --preset changes it)")
    return name or "paper"


def _cmd_train(args: argparse.Namespace) -> int:
    from gliofed.engine import resolve_device
    from gliofed.experiments import train_and_save
    from gliofed.federated.site.policy import SitePolicy
    from gliofed.presets import get_preset

    overrides = {k: v for k, v in dict(epochs=args.epochs, seed=args.seed, device=args.device, lr=args.lr,
                                         batch_size=args.batch_size).items() if v is not None}
    if args.modalities:
        overrides["modalities"] = tuple(args.modalities.split(","))
    preset = get_preset(_train_preset_name(args))
    config = preset.train.replace(**overrides)
    resolve_device(config.device)  # a device this machine lacks is an error now, not after preprocessing
    if args.strategy == "centralized" and args.rounds is None:
        rounds, local_epochs = config.epochs, 1  # one round per epoch: a learning curve for free
    else:
        rounds, local_epochs = (args.rounds if args.rounds is not None else 5), args.local_epochs
    if rounds < 1:
        raise ConfigError(f"the {preset.name} preset trains {rounds} epoch(s); pass --epochs or --rounds >= 1.")
    distill = {**preset.distill, **{k: v for k, v in dict(n_synthetic=args.synthetic, steps=args.distill_steps,
                                                          init=args.distill_init).items() if v is not None}}
    if args.resume:  # a resume must continue the same run: checked before the cache is touched
        from gliofed.federated.server.strategies import make_strategy
        from gliofed.federated.simulate import check_resume
        from gliofed.runs import TrainingRun

        strategy = make_strategy(args.strategy, local_epochs, args.mu, distill, config.seed)
        run = TrainingRun(args.out)
        if not run.has_state:
            raise ConfigError(f"cannot resume: {args.out} holds no saved round state.")
        check_resume(run.load_state(), strategy, config, args.out)
    policy = SitePolicy(allow_real_init=True) if args.allow_real_init else None
    size = args.size
    if size is None:
        size = _native_size(args.manifest)
        print(f"in-plane size {size} (the cohort's native size, at most 128; --size changes it)")
    cache_dir = _cache_for(args.manifest, args.cache, size, args.workers)
    print(f"{args.strategy}: {rounds} rounds x {local_epochs} local epoch(s), {config.optimizer} lr {config.lr}")
    _, history = train_and_save(args.out, cache_dir, args.strategy, config, rounds, local_epochs=local_epochs,
                                mu=args.mu, distill=distill, external_site=args.external_site,
                                min_sites=args.min_sites, resume=args.resume, policy=policy)
    print(history.to_frame().tail(1).to_string(index=False))
    print(f"saved {Path(args.out) / 'model.safetensors'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    from functools import partial
    from pathlib import Path

    from gliofed.data.dataset import CaseDataset
    from gliofed.engine import predict, resolve_device
    from gliofed.errors import ConfigError
    from gliofed.inference import check_preprocessing, postprocess_mask, predict_cases
    from gliofed.metrics import evaluate_predictions, results_table, segmentation_metrics
    from gliofed.runs import load_checkpoint

    if args.min_component < 0:
        raise ConfigError(f"--min-component must be 0 (off) or a positive number of voxels, not {args.min_component}.")
    resolve_device(args.device or "auto")
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
    from gliofed.errors import ConfigError
    from gliofed.vocab import MODALITIES

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
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--difficulty", type=unit_interval, default=0.5, help="0 (easy) .. 1 (hard); default 0.5")
    p.add_argument("--cues", choices=["intensity", "morphology"], default="intensity",
                   help="how markers show: intensity (default; per-tissue intensities and site-specific prevalence) "
                        "or morphology (the harder cohort: equal tissue intensities, markers in shape and texture "
                        "only, one prevalence for every site)")
    p.add_argument("--sites", help="comma-separated subset of sites (default: all five)")
    p.add_argument("--cases-per-site", type=positive_int, help="override the preset's subjects per site")
    p.add_argument("--workers", type=positive_int, default=1)
    p.set_defaults(func=_cmd_synth)


def _add_check(commands) -> None:
    p = commands.add_parser("check", help="report every problem of a manifest and its files")
    p.add_argument("manifest")
    p.add_argument("--workers", type=positive_int, default=1)
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
    p.add_argument("--size", type=positive_int, default=128, help="in-plane size (default 128, the seed's)")
    p.add_argument("--workers", type=positive_int, default=1)
    p.set_defaults(func=_cmd_preprocess)


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train the multi-task network on a manifest")
    p.add_argument("manifest")
    p.add_argument("--strategy", default="centralized",
                   choices=["centralized", "local", "fedavg", "fedprox", "distill"])
    p.add_argument("--rounds", type=positive_int, help="federated rounds (default 5; centralized: one per epoch)")
    p.add_argument("--local-epochs", type=positive_int, default=1, help="epochs per site per round (default 1)")
    p.add_argument("--mu", type=non_negative_float, default=0.01, help="FedProx proximal weight (default 0.01)")
    p.add_argument("--synthetic", type=positive_int, help="distill: synthetic volumes per site (default 3)")
    p.add_argument("--distill-steps", type=non_negative_int, help="distill: condensation steps per round (default 30)")
    p.add_argument("--distill-init", choices=["class_stats", "noise", "real_unsafe"])
    p.add_argument("--allow-real-init", action="store_true",
                   help="as every simulated site's operator, allow --distill-init real_unsafe (teaching only; the "
                        "sites' privacy audit still refuses flagged uploads)")
    p.add_argument("--min-sites", type=positive_int, default=1,
                   help="a round needs this many valid answers (default 1; at most the number of sites)")
    p.add_argument("--external-site", help="hold this site out of training entirely")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.safetensors")
    p.add_argument("--preset", default=None, choices=["paper", "workshop", "tiny"],
                   help="training recipe and distillation effort (default: a synthetic cohort's own preset, from "
                        "its cohort.json; otherwise paper, the seed's: SGD lr 1e-3, 60 epochs)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--modalities", help="comma-separated contrasts, e.g. t1,t2 (default all four)")
    p.add_argument("--seed", type=non_negative_int)
    p.add_argument("--device", type=device_name, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--cache", help="cache folder (default <manifest dir>/cache_<size>; refreshed first)")
    p.add_argument("--size", type=positive_int, help="in-plane size (default: the cohort's native size, at most 128)")
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--out", default="runs/train")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(commands) -> None:
    p = commands.add_parser("evaluate", help="predict and score a checkpoint on a manifest's split")
    p.add_argument("checkpoint")
    p.add_argument("manifest")
    p.add_argument("--split", default="test", choices=["train", "test", "external"])
    p.add_argument("--cache")
    p.add_argument("--size", type=positive_int,
                   help="in-plane size (default: the checkpoint's; another value is refused)")
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--device", type=device_name, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for the 95 %% CIs (0: none)")
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


class _Parser(argparse.ArgumentParser):
    """An argument error is one line, like every other gliofed error (``--help`` still shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gliofed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gliofed`` console script."""
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        return args.func(args)
    except GliofedError as error:
        print(f"gliofed: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
