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

__all__ = ["main", "build_parser", "walk_parsers", "check_arguments", "EXIT_CODES"]

#: what ``gliofed --help`` says the command is for
_DESCRIPTION = ("Federated, multi-task glioma MRI analysis: build or curate a multi-site cohort, preprocess it, train "
                "one 3D network (segmentation + IDH, 1p/19q, MGMT, WHO grade) centrally or across simulated sites, "
                "evaluate it, predict new patients and run the teaching notebooks. Research and teaching software: "
                "not for clinical use. `gliofed COMMAND --help` describes each command.")

#: exit status -> meaning, as ``gliofed --help`` lists them
EXIT_CODES = {
    0: "success",
    1: "the work ran and found problems (`check`: invalid files; `sweep`: a run failed), or an unexpected failure "
       "printed with its traceback (a bug: please report it)",
    2: "bad arguments or input: a one-line error on stderr without a traceback, checked before the work starts "
       "wherever that is possible",
}

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


#: the files a run folder's model may be (gliofed.runs.TrainingRun.MODEL, .LEGACY_MODEL), named here so that the
#: argument check does not import torch
_RUN_MODELS = ("model.safetensors", "model.ckpt")


def _checkpoint_exists(path: str) -> None:
    """A checkpoint is a weights file, a run folder holding one, or an old ``model.ckpt`` name whose
    ``model.safetensors`` replaced it (what :func:`gliofed.runs.load_checkpoint` accepts)."""
    checkpoint = Path(path)
    if checkpoint.is_dir():
        if not any((checkpoint / name).is_file() for name in _RUN_MODELS):
            raise ConfigError(f"{checkpoint}: no {_RUN_MODELS[0]} in this folder.")
    elif not checkpoint.is_file() and not checkpoint.with_suffix(".safetensors").is_file():
        raise ConfigError(f"{checkpoint}: checkpoint not found.")


def check_arguments(args: argparse.Namespace) -> None:
    """Everything about the arguments that can be checked without reading images or importing torch: files that
    must exist, manifests that must have subjects, output folders that must be writable, ``--min-sites`` against
    the manifest's sites. Raises a :class:`~gliofed.errors.GliofedError` (one line)."""
    command = args.command
    if command in ("evaluate", "predict"):
        _checkpoint_exists(args.checkpoint)
    rows = _manifest_rows(args.manifest) if command in ("check", "preprocess", "train", "evaluate") else None
    if command == "preprocess":
        writable_folder(args.cache, "cache folder")
    if command in ("train", "evaluate") and args.cache:
        writable_folder(args.cache, "cache folder")
    if command in ("synth", "train", "evaluate", "predict", "sweep") or (command == "notebooks"
                                                                         and hasattr(args, "out")):
        writable_folder(args.out)
    if command == "predict" and args.manifest and not Path(args.manifest).is_file():
        raise ManifestError(f"{args.manifest}: manifest file not found.")
    if command == "curate":
        _writable_file(args.out, "manifest to write")
        if getattr(args, "partition", None) and not Path(args.partition).is_file():
            raise ConfigError(f"{args.partition}: partition file not found.")
    if command == "card":
        run = Path(args.run)
        if not (run / "model.safetensors").is_file() and not (run.is_file() and run.suffix == ".safetensors"):
            raise ConfigError(f"{run}: not a run folder with a model.safetensors, nor a model.safetensors file.")
        if args.out:
            _writable_file(args.out, "model card to write")
    if command == "train" and args.config:
        from gliofed.config import read_config_file

        read_config_file(args.config)  # a bad file is reported now, not after preprocessing
    if command == "train":
        every_site = {row.get("site", "") for row in rows} - {"", None}
        if args.external_site is not None and args.external_site not in every_site:
            raise ConfigError(f"--external-site {args.external_site!r} is not a site of {args.manifest} (its sites: "
                              f"{', '.join(sorted(every_site))}).")
        sites = every_site - {args.external_site}
        if args.strategy != "centralized" and args.min_sites > len(sites):
            raise ConfigError(f"--min-sites {args.min_sites} is more than the {len(sites)} training site(s) in "
                              f"{args.manifest}.")
        if args.preset is None:  # a damaged cohort.json is reported now, not after preprocessing
            from gliofed.presets import cohort_preset

            cohort_preset(args.manifest)
        if args.aggregation != "mean" and args.strategy not in ("fedavg", "fedprox"):
            raise ConfigError(f"--aggregation {args.aggregation} applies to fedavg and fedprox, not {args.strategy}.")
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

    report = preprocess(args.manifest, args.cache, size=args.size, workers=args.workers)  # None: the plan's rule
    print(report)
    return 0


def _cmd_notebooks(args: argparse.Namespace) -> int:
    from gliofed.notebooks import parse_value, run_notebooks

    run_notebooks(args.out, {k: parse_value(v) for k, v in args.parameters or []}, strict=True, progress=True)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from gliofed.notebooks import NOTEBOOK_DIR, parse_grid, parse_value, sweep

    notebook = Path(args.notebook)
    if not notebook.is_file() and (NOTEBOOK_DIR / notebook.name).is_file():
        notebook = NOTEBOOK_DIR / notebook.name  # "03_evaluation.ipynb" means the shipped notebook
    table = sweep(notebook, parse_grid(args.grid), args.out, {k: parse_value(v) for k, v in args.parameters or []},
                  html=args.html)
    return 1 if (table["status"] == "failed").any() else 0


def _cmd_card(args: argparse.Namespace) -> int:
    from gliofed.card import model_card

    card = model_card(args.run, n_boot=args.bootstrap)
    print(card)
    if args.out:
        from gliofed.fileio import atomic_write_text

        atomic_write_text(args.out, card + "\n")
        print(f"wrote {args.out}")
    return 0


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
    result = curate(args.source, args.root, args.labels, args.site, partition=args.partition,
                    label_convention=args.label_convention)
    manifest, report = result.write(args.out)
    print(result)
    print(f"wrote {manifest} and {report}")
    return 0


def _cache_for(manifest: str, cache: str | None, plan, workers: int):
    """The cache of ``manifest`` made with the preprocessing record ``plan`` (default folder
    ``<manifest dir>/cache_<size>``), brought up to date first; a cache made with another record is refused."""
    from gliofed.data.cache import preprocess

    cache_dir = Path(cache) if cache else Path(manifest).resolve().parent / f"cache_{plan.size}"
    report = preprocess(manifest, cache_dir, size=plan.for_cache(), workers=workers, progress=False)
    if len(report.skipped):
        print(report)
    return cache_dir


def _training_plan(manifest: str, cache: str | None, size: int | None):
    """The preprocessing record a training run uses: the record of ``--cache`` when it already holds one (and no
    ``--size`` is given), else the one :func:`gliofed.data.plan.plan_for_manifest` makes."""
    from gliofed.data.cache import read_plan, read_settings
    from gliofed.data.plan import plan_for_manifest

    if size is None and cache and read_settings(cache) is not None:
        return read_plan(cache)
    return plan_for_manifest(manifest, size)


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


def train_config(base, args: argparse.Namespace):
    """The training config of ``gliofed train``: ``base`` (the preset's), then ``--config FILE``, then the flags.

    Args:
        base: the preset's :class:`~gliofed.config.TrainConfig`.
        args: the parsed ``train`` arguments.

    Returns:
        the :class:`~gliofed.config.TrainConfig` to train with.
    """
    from gliofed.config import read_config_file

    from_file = read_config_file(args.config) if args.config else {}
    flags = {k: v for k, v in dict(epochs=args.epochs, seed=args.seed, device=args.device, lr=args.lr,
                                     batch_size=args.batch_size, num_workers=args.loader_workers).items()
             if v is not None}
    if args.modalities:
        flags["modalities"] = tuple(args.modalities.split(","))
    return base.replace(**{**from_file, **flags})


def _cmd_train(args: argparse.Namespace) -> int:
    from gliofed.engine import resolve_device
    from gliofed.experiments import train_and_save
    from gliofed.federated.site.policy import SitePolicy
    from gliofed.presets import get_preset
    from gliofed.runs import TrainingRun

    preset = get_preset(_train_preset_name(args))
    config = train_config(preset.train, args)
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
        from gliofed.data.manifest import manifest_fingerprint
        from gliofed.federated.server.strategies import make_strategy
        from gliofed.federated.simulate import check_resume

        strategy = make_strategy(args.strategy, local_epochs, args.mu, distill, config.seed,
                                 aggregation=args.aggregation)
        run = TrainingRun(args.out)
        if not run.has_state:
            raise ConfigError(f"cannot resume: {args.out} holds no saved round state.")
        data = {"manifest": manifest_fingerprint(args.manifest), "external_site": args.external_site}
        if args.size is not None:
            data["size"] = args.size
        check_resume(run.load_state(), strategy, config, args.out, data)  # the cached cases: once refreshed
    policy = SitePolicy(allow_real_init=True) if args.allow_real_init else None
    with TrainingRun(args.out).lock():  # a second train into this folder is refused before any work
        plan = _training_plan(args.manifest, args.cache, args.size)
        if args.size is None:
            print(f"in-plane size {plan.size} (a synthetic cohort's preset size, else the cohort's native size, at "
                  "most 128; --size changes it)")
        cache_dir = _cache_for(args.manifest, args.cache, plan, args.workers)
        print(f"{args.strategy}: {rounds} rounds x {local_epochs} local epoch(s), {config.optimizer} lr {config.lr}")
        _, history = train_and_save(args.out, cache_dir, args.strategy, config, rounds, local_epochs=local_epochs,
                                    mu=args.mu, distill=distill, external_site=args.external_site,
                                    min_sites=args.min_sites, resume=args.resume, policy=policy,
                                    aggregation=args.aggregation, manifest=args.manifest,
                                    threshold_method=args.threshold)
    print(history.to_frame().tail(1).to_string(index=False))
    print(f"saved {Path(args.out) / 'model.safetensors'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from functools import partial
    from pathlib import Path

    from gliofed.data.cache import check_plan
    from gliofed.data.dataset import CaseDataset
    from gliofed.data.manifest import read_manifest
    from gliofed.engine import predict
    from gliofed.errors import ConfigError
    from gliofed.evaluation import native_scores, summarise_native
    from gliofed.fileio import atomic_write_text, to_json, write_csv
    from gliofed.inference import Predictor, postprocess_mask, predict_cases
    from gliofed.metrics import evaluate_predictions, results_table, segmentation_metrics, threshold_note

    if args.min_component is not None and args.min_component < 0:
        raise ConfigError(f"--min-component must be 0 (off) or a positive number of voxels, not {args.min_component}.")
    inference = _inference(args)
    # the checkpoint's model, preprocessing record and contrasts, checked against --size before any work; the raw
    # scores without post-processing, the post-processed ones (the checkpoint's choice unless told) beside them
    predictor = Predictor(args.checkpoint, size=args.size, device=args.device or "auto", min_voxels=0,
                          keep_largest=False, inference=inference)
    config, size, plan = predictor.config, predictor.size, predictor.plan
    recorded_min, recorded_largest = predictor.recorded_postprocessing
    args.min_component = recorded_min if args.min_component is None else args.min_component
    args.keep_largest = recorded_largest if args.keep_largest is None else args.keep_largest
    cache_dir = _cache_for(args.manifest, args.cache, plan, args.workers)
    check_plan(cache_dir, plan, f"the model {args.checkpoint}")
    dataset = CaseDataset(cache_dir, split=args.split, modalities=config.modalities, seed=config.seed)
    if not len(dataset):
        raise ConfigError(f"{args.manifest}: no {args.split} cases to evaluate.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cleaning = args.min_component > 0 or args.keep_largest
    postprocess = partial(postprocess_mask, min_voxels=args.min_component, keep_largest=args.keep_largest)
    # markers, and the quick segmentation metric on the cache grid
    predictions = predict(predictor.model, dataset, device=predictor.device,
                          postprocess=postprocess if cleaning else None, inference=inference)
    write_csv(out / "predictions.csv", predictions)
    thresholds = predictor.thresholds  # chosen on the training split and stored with the model
    tables = evaluate_predictions(predictions, n_boot=args.bootstrap, seed=config.seed, thresholds=thresholds)
    table3 = results_table(tables["classification"])
    write_csv(out / "metrics_classification.csv", tables["classification"])
    write_csv(out / "metrics_segmentation_quick.csv", tables["segmentation"])
    write_csv(out / "table3.csv", table3, index=True)
    # BraTS-comparable: every case with a mask predicted back into its scan's grid (predict's own inverse) and
    # scored there against its reference mask
    manifest = read_manifest(args.manifest, strict=False).set_index("subject_id")
    columns = ["t1", "t1ce", "t2", "flair", "seg", "site", "label_convention"]
    masked = dataset.index[dataset.index["has_mask"].astype(str).str.lower().isin(("true", "1"))]
    cases = [{"subject_id": s, **manifest.loc[s, columns].to_dict()} for s in masked["subject_id"]]
    native = native_scores(predictor, cases, progress=False)
    write_csv(out / "scores_brats.csv", native)
    native_table = summarise_native(native)
    write_csv(out / "metrics_segmentation.csv", native_table)
    summary = {"checkpoint": str(args.checkpoint), "split": args.split, "cases": len(predictions), "size": size,
               "modalities": list(config.modalities), "inference": inference.to_dict(), "thresholds": thresholds,
               "threshold_note": threshold_note(thresholds),
               "classification": tables["classification"].to_dict(orient="records"),
               "segmentation_grid": "each scan's own grid, BraTS scores (brats-evaluation 0.0.10 definitions)",
               "segmentation": native_table.to_dict(orient="records"),
               "segmentation_quick": {"grid": f"cache grid ({size}x{size} in-plane, cropped): a quick metric, not "
                                              "comparable with BraTS results",
                                      "table": tables["segmentation"].to_dict(orient="records")}}
    if cleaning:  # reported beside, never instead of, the raw scores
        predictor.min_voxels, predictor.keep_largest = args.min_component, args.keep_largest
        native_pp = native_scores(predictor, cases, progress=False)
        write_csv(out / "scores_brats_postprocessed.csv", native_pp)
        pp_table = summarise_native(native_pp)
        write_csv(out / "metrics_segmentation_postprocessed.csv", pp_table)
        raw = [f"{m}_{r}" for m in ("dice", "hd95") for r in ("WT", "TC", "ET")]
        quick_pp = segmentation_metrics(predictions.drop(columns=raw).rename(columns=lambda c: c.removeprefix("pp_")))
        summary["postprocessing"] = {"min_voxels": args.min_component, "keep_largest": args.keep_largest}
        summary["segmentation_postprocessed"] = pp_table.to_dict(orient="records")
        summary["segmentation_quick"]["postprocessed"] = quick_pp.to_dict(orient="records")
    atomic_write_text(out / "metrics.json", to_json(summary, indent=2))
    print(table3.to_string() if len(table3) else f"no marker labels among the {args.split} cases: no classification "
          "metrics")
    if len(table3):
        print(threshold_note(thresholds))
    if len(cases):
        print(f"segmentation in the scans' own grids, BraTS scores ({len(cases)} case(s) with a mask):")
        print(native_table.to_string(index=False))
        print(f"quick metric on the {size}x{size} cache grid (not comparable with BraTS results):")
        print(tables["segmentation"].to_string(index=False))
    else:
        print(f"no masks among the {args.split} cases: no segmentation metrics")
    if cleaning and len(cases):
        print(f"post-processed (components < {args.min_component} voxels removed"
              f"{', largest kept' if args.keep_largest else ''}), scans' own grids:")
        print(pp_table.to_string(index=False))
    if args.nifti:
        nifti_cases = [{"subject_id": s, **manifest.loc[s, ["t1", "t1ce", "t2", "flair", "label_convention"]].to_dict()}
                       for s in dataset.index["subject_id"]]
        predict_cases(args.checkpoint, nifti_cases, out / "nifti", size=size, device=args.device or "auto",
                      min_voxels=args.min_component, keep_largest=args.keep_largest, progress=False,
                      inference=inference, overwrite=True)  # evaluate's own folder: re-running it replaces its outputs
        print(f"wrote {len(nifti_cases)} NIfTI mask(s) in the scans' own grids to {out / 'nifti'}")
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
                          min_voxels=args.min_component, keep_largest=args.keep_largest, progress=len(cases) > 1,
                          label_convention=args.label_convention, inference=_inference(args),
                          overwrite=args.overwrite, inputs=(args.manifest,) if args.manifest else ())
    for row in table.itertuples():
        print(f"{row.subject}: {row.seg} (whole tumour {row.volume_WT_ml:.1f} ml), {row.markers}")
    print(f"wrote {len(table)} case(s) to {args.out} (predictions.csv)")
    return 0


_WORKERS_HELP = "processes that read and preprocess scans in parallel (default 1)"


def _add_synth(commands) -> None:
    p = commands.add_parser("synth", help="generate the synthetic multi-site cohort",
                            description="Generate gliofed's synthetic multi-site cohort (real MNI152 anatomy, "
                                        "synthetic gliomas, five sites): NIfTI files, manifest.csv and cohort.json.")
    p.add_argument("--preset", default="workshop", choices=["tiny", "workshop", "paper"],
                   help="cohort size: tiny (CI, seconds), workshop (CPU laptop, default), paper (the seed's 1,552 "
                        "subjects)")
    p.add_argument("--out", required=True, help="output folder (receives manifest.csv)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="reproduces the cohort and its train/test split exactly (default 0)")
    p.add_argument("--difficulty", type=unit_interval, default=0.5, help="0 (easy) .. 1 (hard); default 0.5")
    p.add_argument("--cues", choices=["intensity", "morphology"], default="intensity",
                   help="how markers show: intensity (default; per-tissue intensities and site-specific prevalence) "
                        "or morphology (the harder cohort: equal tissue intensities, markers in shape and texture "
                        "only, one prevalence for every site)")
    p.add_argument("--sites", help="comma-separated subset of sites (default: all five)")
    p.add_argument("--cases-per-site", type=positive_int, help="override the preset's subjects per site")
    p.add_argument("--workers", type=positive_int, default=1, help="processes that write cases in parallel "
                                                                  "(default 1)")
    p.set_defaults(func=_cmd_synth)


def _add_check(commands) -> None:
    p = commands.add_parser("check", help="report every problem of a manifest and its files",
                            description="Open every file of a manifest and report each problem on one line "
                                        "(exit 1 if there is any).")
    p.add_argument("manifest", help="the manifest CSV (paths relative to it)")
    p.add_argument("--workers", type=positive_int, default=1, help="processes that open files in parallel "
                                                                  "(default 1)")
    p.set_defaults(func=_cmd_check)


def _add_curate(commands) -> None:
    p = commands.add_parser("curate", help="build a manifest from a real dataset download, or merge manifests",
                            description="Walk a public dataset's download and write one manifest plus a report of "
                                        "every case found (included or excluded, with the reason).")
    p.add_argument("--source",
                   choices=["brats", "brats2021", "upenn-gbm", "tcga", "rembrandt", "ucsf-pdgm", "egd", "msd"],
                   help="the dataset's layout (one source card per dataset in data_manifests/)")
    p.add_argument("--root", help="the dataset's download folder")
    p.add_argument("--labels", nargs="+", default=[], metavar="FILE",
                   help="label files (CSV / XLSX / JSON tables named in data_manifests/<source>.md)")
    p.add_argument("--site", help="site name for every case (default: the institution a BraTS 2017-2020 ID names, "
                   "else the dataset name)")
    p.add_argument("--partition", metavar="CSV",
                   help="a FeTS partitioning CSV (Partition_ID, Subject_ID): one site per partition")
    p.add_argument("--label-convention", choices=["brats", "brats2023", "brats2024", "msd"],
                   help="how the masks are labelled (default: detected from the file names and the masks)")
    p.add_argument("--merge", nargs="+", metavar="CSV", help="merge curated manifests and remove duplicates")
    p.add_argument("--out", required=True, help="manifest to write (the report goes next to it)")
    p.set_defaults(func=_cmd_curate)


def _add_preprocess(commands) -> None:
    p = commands.add_parser("preprocess", help="preprocess a manifest into the case cache",
                            description="The seed's preprocessing (RAS, crop to the brain, in-plane resize, z-score) "
                                        "into a memory-mapped cache; up-to-date cases are skipped.")
    p.add_argument("manifest", help="the manifest CSV")
    p.add_argument("--cache", required=True, help="cache folder")
    p.add_argument("--size", type=positive_int,
                   help="in-plane size (default: the cache's own record if it has one, else a synthetic cohort's "
                        "preset size, else the cohort's native size, at most 128)")
    p.add_argument("--workers", type=positive_int, default=1, help=_WORKERS_HELP)
    p.set_defaults(func=_cmd_preprocess)


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train the multi-task network on a manifest",
                            description="Train the multi-task network centrally or across the manifest's sites "
                                        "(simulated federation). Settings come from the preset, then --config, then "
                                        "the flags below (a flag wins over the file, the file over the preset).")
    p.add_argument("manifest", help="the manifest CSV (its cache is made or refreshed first)")
    p.add_argument("--strategy", default="centralized",
                   choices=["centralized", "local", "fedavg", "fedprox", "distill"],
                   help="how the sites train together (default centralized: all cases pooled)")
    p.add_argument("--rounds", type=positive_int, help="federated rounds (default 5; centralized: one per epoch)")
    p.add_argument("--local-epochs", type=positive_int, default=1, help="epochs per site per round (default 1)")
    p.add_argument("--mu", type=non_negative_float, default=0.01, help="FedProx proximal weight (default 0.01)")
    p.add_argument("--aggregation", default="mean", choices=["mean", "median", "trimmed-mean"],
                   help="fedavg/fedprox: how the server combines site weights (default mean, weighted by cases; "
                        "median and trimmed-mean resist a poisoned site)")
    p.add_argument("--synthetic", type=positive_int, help="distill: synthetic volumes per site (default 3)")
    p.add_argument("--distill-steps", type=non_negative_int, help="distill: condensation steps per round (default 30)")
    p.add_argument("--distill-init", choices=["class_stats", "noise", "real_unsafe"],
                   help="distill: how synthetic volumes start (default class_stats: pooled statistics of at least "
                        "min_group patients; real_unsafe copies patients, teaching only)")
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
    p.add_argument("--config", metavar="FILE",
                   help="training settings (any TrainConfig fields: epochs, lr, optimizer, batch_size, seed, "
                        "num_workers, ...) as JSON or TOML; they replace the preset's, and the flags below replace "
                        "them")
    p.add_argument("--epochs", type=positive_int,
                   help="epochs (centralized: also the number of rounds; default: the preset's)")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: the preset's)")
    p.add_argument("--batch-size", type=positive_int, help="cases per training step (default: the preset's)")
    p.add_argument("--modalities", help="comma-separated contrasts, e.g. t1,t2 (default all four)")
    p.add_argument("--seed", type=non_negative_int,
                   help="seeds weights, data order, augmentation and the split of unsplit cases (default 0)")
    p.add_argument("--device", type=device_name, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--threshold", choices=["youden", "f1"], default="youden",
                   help="how each binary marker's decision threshold is chosen on the training split and stored "
                        "with the model: youden (default, Youden's J on the ROC curve) or f1 (F1-optimal)")
    p.add_argument("--cache", help="cache folder (default <manifest dir>/cache_<size>; refreshed first)")
    p.add_argument("--size", type=positive_int,
                   help="in-plane size (default: as `gliofed preprocess`: the cache's record, a synthetic cohort's "
                        "preset size, else the cohort's native size, at most 128)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes that preprocess scans into the cache before training (default 1)")
    p.add_argument("--loader-workers", type=non_negative_int,
                   help="DataLoader worker processes that feed training batches (default: the preset's, 0 = in "
                        "the training process)")
    p.add_argument("--out", default="runs/train", help="run folder for the model, history and state "
                                                       "(default runs/train)")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(commands) -> None:
    p = commands.add_parser("evaluate", help="predict and score a checkpoint on a manifest's split",
                            description="Predict a split of a manifest with a checkpoint and score it: Table 3 with "
                                        "bootstrap CIs (recall, specificity and F1 at the thresholds stored with the "
                                        "model), Dice and HD95.")
    p.add_argument("checkpoint", help="model.safetensors (with model.json beside it) or a run folder")
    p.add_argument("manifest", help="the manifest CSV")
    p.add_argument("--split", default="test", choices=["train", "test", "external"],
                   help="which cases to score (default test)")
    p.add_argument("--cache", help="cache folder (default <manifest dir>/cache_<size>; refreshed first)")
    p.add_argument("--size", type=positive_int,
                   help="in-plane size (default: the checkpoint's; another value is refused)")
    p.add_argument("--workers", type=positive_int, default=1, help=_WORKERS_HELP)
    p.add_argument("--device", type=device_name, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for the 95 %% CIs (0: none)")
    _add_postprocessing(p)
    p.add_argument("--nifti", action="store_true",
                   help="also write each case's predicted mask as NIfTI in its original grid (OUT/nifti/)")
    p.add_argument("--out", default="runs/evaluate", help="folder for predictions and metrics (default "
                                                          "runs/evaluate)")
    p.set_defaults(func=_cmd_evaluate)


def _add_postprocessing(p) -> None:
    p.add_argument("--min-component", type=non_negative_int, default=None, metavar="N",
                   help="post-processing: remove tumour components smaller than N voxels of the preprocessed grid "
                        "(default: the checkpoint's, chosen on its training cases; 0: off)")
    p.add_argument("--keep-largest", action="store_true", default=None,
                   help="post-processing: keep only the largest tumour component (default: the checkpoint's)")
    p.add_argument("--window", metavar="D,H,W",
                   help="sliding-window inference with Gaussian weighting over windows of D x H x W voxels of the "
                        "preprocessed grid, -1 = the whole axis (default: one pass over the whole volume)")
    p.add_argument("--flips", metavar="AXES",
                   help="test-time flips: axes of (D, H, W) = 0,1,2 whose flipped volumes are averaged in, e.g. 2 "
                        "(left-right; default none)")


def _inference(args: argparse.Namespace):
    """The :class:`~gliofed.segmentation.SegmentationInference` of ``--window`` and ``--flips``."""
    from gliofed.segmentation import SegmentationInference

    def integers(text: str | None, flag: str) -> tuple[int, ...] | None:
        if text is None:
            return None
        try:
            return tuple(int(part) for part in text.split(","))
        except ValueError:
            raise ConfigError(f"{flag} {text!r} is not comma-separated integers.") from None

    return SegmentationInference(window=integers(args.window, "--window"),
                                 flips=integers(args.flips, "--flips") or ())


def _add_predict(commands) -> None:
    p = commands.add_parser("predict", help="segment new patients' NIfTI scans and predict their markers",
                            description="Segment new patients' scans (masks written back in each scan's own grid) "
                                        "and predict IDH, 1p/19q, MGMT and grade. Research use only: not for "
                                        "clinical decisions.")
    p.add_argument("checkpoint", help="model.safetensors (with model.json beside it) or a run folder")
    for modality in ("t1", "t1ce", "t2", "flair"):
        p.add_argument(f"--{modality}", metavar="NIFTI", help=f"the case's {modality.upper()} scan")
    p.add_argument("--subject", help="case name for the outputs (default: from the FLAIR file name)")
    p.add_argument("--manifest", help="many cases: a CSV with subject_id and t1, t1ce, t2, flair path columns")
    p.add_argument("--out", required=True, help="folder for <subject>_seg.nii.gz, <subject>_markers.json and "
                   "predictions.csv")
    p.add_argument("--size", type=positive_int,
                   help="in-plane size (default: the checkpoint's; another value is refused)")
    p.add_argument("--device", type=device_name, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--overwrite", action="store_true",
                   help="replace earlier predictions in --out (default: refused; inputs are never overwritten)")
    p.add_argument("--label-convention", choices=["brats", "brats2023", "brats2024", "msd"],
                   help="labels of the written masks (default: the manifest's label_convention, else from the file "
                        "names: BraTS 2023+ names -> brats2023 (enhancing tumour 3), otherwise brats (4))")
    _add_postprocessing(p)
    p.set_defaults(func=_cmd_predict)


def _add_card(commands) -> None:
    p = commands.add_parser("card", help="print a trained model's card (data, sites, metrics, intended use, limits)",
                            description="A model card for a run folder or checkpoint: provenance (versions, commit, "
                                        "training-data fingerprint), data and sites, test metrics with bootstrap CIs, "
                                        "decision thresholds, intended use and limits (Markdown).")
    p.add_argument("run", help="a run folder, or its model.safetensors")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for the metrics' 95 %% CIs (default 1000; 0: none)")
    p.add_argument("--out", metavar="FILE", help="also write the card to this Markdown file")
    p.set_defaults(func=_cmd_card)


def _add_notebooks(commands) -> None:
    p = commands.add_parser("notebooks", help="execute the ordered notebooks with papermill",
                            description="Execute the shipped notebooks with papermill.")
    sub = p.add_subparsers(dest="action", required=True, title="actions", metavar="ACTION")
    run = sub.add_parser("run", help="run notebooks/01_... onwards in order",
                         description="Run the shipped notebooks (01_... onwards) in order with the same parameters; "
                                     "a parameter no notebook declares is refused before any runs.")
    run.add_argument("--out", default="runs/notebooks", help="folder for executed notebooks and HTML")
    run.add_argument("-p", "--parameter", nargs=2, action="append", dest="parameters", metavar=("KEY", "VALUE"),
                     help="a notebook parameter, e.g. -p preset tiny (repeat; each notebook gets the ones it declares)")
    run.set_defaults(func=_cmd_notebooks)


def _add_sweep(commands) -> None:
    p = commands.add_parser("sweep", help="run one notebook over a parameter grid and collect the results",
                            description="Run one notebook once per combination of the grid and collect every run's "
                                        "results into OUT/sweep.csv.")
    p.add_argument("notebook", help="path, or the name of a shipped notebook (e.g. 03_evaluation.ipynb)")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=a,b",
                   help="parameter values to sweep (repeat for a cartesian grid)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", dest="parameters", metavar=("KEY", "VALUE"),
                   help="a fixed parameter for every run; {KEY} in its value is replaced by that run's grid value "
                        "(e.g. -p data_dir data/tiny-{seed})")
    p.add_argument("--out", default="runs/sweep", help="one folder per run plus sweep.csv")
    p.add_argument("--html", action="store_true", help="also export each executed notebook as HTML")
    p.set_defaults(func=_cmd_sweep)


#: one function per subcommand, in the order ``gliofed --help`` lists them
_SUBCOMMANDS = (_add_synth, _add_check, _add_curate, _add_preprocess, _add_train, _add_evaluate, _add_predict,
                _add_card, _add_notebooks, _add_sweep)


class _Parser(argparse.ArgumentParser):
    """An argument error is one line, like every other gliofed error (``--help`` still shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _exit_codes_text() -> str:
    return "exit status:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


class _Formatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal; the exit-status list (the epilog) wrapped line by line, indented."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if not text.startswith("exit status:"):
            return super()._fill_text(text, width, indent)
        import textwrap

        head, *lines = text.splitlines()
        return "\n".join([head] + [textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + "     ")
                                   for line in lines])


def build_parser() -> argparse.ArgumentParser:
    """The ``gliofed`` argument parser: every subcommand, every flag with its help, the exit codes in the epilog."""
    from gliofed import __version__

    parser = _Parser(prog="gliofed", description=_DESCRIPTION, epilog=_exit_codes_text(), formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"gliofed {__version__}",
                        help="print gliofed's version and exit")
    commands = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(commands)
    for sub in walk_parsers(parser):  # every command's --help ends with the exit codes too
        sub.epilog, sub.formatter_class = parser.epilog, _Formatter
    return parser


def walk_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every (sub)command parser below it, depth first."""
    found = [parser]
    for action in parser._actions:  # argparse exposes subcommands only through its actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += walk_parsers(sub)
    return found


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
