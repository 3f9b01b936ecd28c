"""`gliofed predict`: a trained model on new patients' NIfTI scans, written back as NIfTI in each scan's own grid.

For every case the scans go through the training preprocessing (:func:`gliofed.data.transforms.preprocess_pipeline`:
load -> RAS -> stack -> crop to non-zero voxels -> in-plane resize to the checkpoint's size -> z-score ->
(C, D, H, W)), the model predicts, and the predicted class map is taken back through the inverse of those spatial
steps with MONAI's :class:`~monai.transforms.Invertd` (nearest-neighbour): un-resize, un-crop (pad with background),
back from RAS to the scan's own orientation. The mask is then written with nibabel using the input FLAIR's own
affine and header, so 3D Slicer and ITK-SNAP overlay it on the original scans.

Outputs in ``OUT/``:

- ``<subject>_seg.nii.gz``: uint8, in the label convention of the case's dataset
  (:mod:`gliofed.data.conventions`; BraTS 2017-2021 by default: 0 background, 1 necrotic core, 2 oedema,
  4 enhancing tumour; BraTS 2023+: enhancing tumour 3);
- ``<subject>_markers.json``: per marker the class probabilities (by class name) and the predicted class;
- ``predictions.csv``: one row per case (probabilities, predicted classes, tumour volumes in ml, output paths).

Nothing is lost: before any work, ``OUT`` may not be a folder that holds an input scan, its ground truth (a
manifest's ``seg``) or the manifest, an existing prediction is replaced only with ``overwrite``, subject names
follow the manifest's safe-name rule, and every scan's header is checked against its file size (no allocation from
a declared size). Finite in, finite out: an image that is not finite after z-scoring, or a model whose outputs are
not, is refused naming the subject.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from gliofed.data.conventions import CONVENTIONS, FILE_SUFFIXES, convention, convention_of_files
from gliofed.errors import ConfigError, DataError, first_line
from gliofed.fileio import atomic_write, atomic_write_text, to_json, write_csv
from gliofed.preprocessing import PREPROCESS_VERSION, Preprocessing, plan_of
from gliofed.segmentation import SegmentationInference, postprocess_mask
from gliofed.vocab import MARKER_CLASSES, MARKERS, MODALITIES, REGIONS

__all__ = ["Predictor", "inference_pipeline", "postprocess_mask", "predict_cases", "read_cases", "subject_name",
           "preprocessing_of_cache", "check_preprocessing", "model_plan", "recorded_postprocessing", "check_outputs",
           "check_scans", "output_paths", "BRATS_LABELS"]

#: in-memory class -> BraTS 2017-2021 label (the default convention; others: :mod:`gliofed.data.conventions`)
BRATS_LABELS = CONVENTIONS["brats"].encode(np.arange(4))


def inference_pipeline(modalities, size: int | Preprocessing):
    """The training preprocessing for the given contrasts, without a mask, with every spatial step recorded so
    that :class:`~monai.transforms.Invertd` can undo it: :func:`gliofed.data.transforms.plan_pipeline`, the very
    pipeline the cache runs, without the cache layout.

    Args:
        modalities: the contrasts given (all of them find the brain for the crop), in channel order.
        size: the checkpoint's :class:`~gliofed.preprocessing.Preprocessing` record, or an in-plane size.
    """
    from gliofed.data.transforms import plan_pipeline

    plan = size if isinstance(size, Preprocessing) else Preprocessing(size=int(size))
    return plan_pipeline(plan, list(modalities), with_seg=False, cache_layout=False)


def preprocessing_of_cache(cache_dir: str | Path, modalities) -> Preprocessing:
    """What a model trained on ``cache_dir`` expects of its input: the cache's record
    (:func:`gliofed.data.cache.read_plan`) with the model's ``modalities`` as channels; recorded in every checkpoint
    so that ``evaluate`` and ``predict`` re-create exactly that input."""
    from gliofed.data.cache import read_plan

    return read_plan(cache_dir).for_model(tuple(modalities))


def model_plan(checkpoint: str | Path, recorded: dict | Preprocessing | None, size: int | None = None,
               modalities=None) -> Preprocessing:
    """The preprocessing record a checkpoint's model expects, checked against what the user asked for.

    Args:
        checkpoint: the checkpoint's path (for messages).
        recorded: the checkpoint's ``preprocessing`` (a record, its dictionary, or an old checkpoint's partial one).
        size: the in-plane size the user asked for (``--size``), or None.
        modalities: the model's contrasts, for a checkpoint that recorded none (default: all four).

    Returns:
        the record (for a checkpoint without one: the default record at ``size``).

    Raises:
        ConfigError: ``size`` differs from the recorded one, the record is of another preprocessing version, or
            neither gives a size (one sentence each).
    """
    where = str(checkpoint)
    plan = plan_of(recorded, where)
    if plan is None:
        if size is None:
            raise ConfigError(f"{checkpoint}: the checkpoint records no input size; give --size (the in-plane size "
                              "it was trained at).")
        chosen = (recorded or {}).get("modalities") if isinstance(recorded, dict) else None
        return Preprocessing(size=int(size), modalities=tuple(chosen or modalities or MODALITIES))
    if size is not None and int(size) != plan.size:
        raise ConfigError(f"{checkpoint}: the model was trained on {plan.size}x{plan.size} in-plane inputs but --size "
                          f"{size} was given; leave --size out to use {plan.size}.")
    if plan.version != PREPROCESS_VERSION:
        raise ConfigError(f"{checkpoint}: the model was trained with preprocessing version {plan.version}, this "
                          f"gliofed preprocesses with version {PREPROCESS_VERSION}; use the gliofed release it was "
                          "trained with.")
    return plan


def check_preprocessing(checkpoint: str | Path, recorded: dict | None, size: int | None) -> int | None:
    """The in-plane size to use with a checkpoint (:func:`model_plan`'s), or None when neither the user nor the
    checkpoint gives one. Raises :class:`ConfigError` on a mismatch (the model would see inputs it was not trained
    on)."""
    try:
        return model_plan(checkpoint, recorded, size).size
    except ConfigError as error:
        if "records no input size" in str(error):
            return None
        raise


def recorded_postprocessing(state: Mapping, min_voxels: int | None = None,
                            keep_largest: bool | None = None) -> tuple[int, bool]:
    """The post-processing to apply with a checkpoint: what the caller asks, else what the checkpoint records
    (``extra.postprocessing``, chosen on its training cases), else off."""
    recorded = ((state.get("extra") or {}).get("postprocessing") or {}) if isinstance(state, Mapping) else {}
    chosen_min = recorded.get("min_voxels", 0) if min_voxels is None else min_voxels
    chosen_largest = recorded.get("keep_largest", False) if keep_largest is None else keep_largest
    if isinstance(chosen_min, bool) or not isinstance(chosen_min, int) or chosen_min < 0:
        raise ConfigError(f"the checkpoint's post-processing min_voxels {chosen_min!r} is not an integer >= 0.")
    return chosen_min, bool(chosen_largest)


def check_scans(subject: str, paths: Mapping[str, str | Path | None]) -> dict[str, str]:
    """Every contrast given for ``subject`` must exist, and its header must declare no more data than its file can
    hold (:func:`~gliofed.data.check.nifti_size_problem`: the header only, read before torch is even imported, so a
    forged size allocates nothing).

    Args:
        subject: the case's name (for messages).
        paths: contrast -> NIfTI path (blank/None where absent; other keys are ignored).

    Returns:
        contrast -> path of every contrast given.

    Raises:
        DataError: one sentence naming the subject, contrast and file.
    """
    from gliofed.data.check import nifti_size_problem, read_error

    given = {k: str(v) for k, v in paths.items() if k in MODALITIES and v}
    for key, path in given.items():
        if not Path(path).is_file():
            raise DataError(f"subject {subject}: {key} file {path} not found.")
        try:
            problem = nifti_size_problem(path)
        except Exception as error:  # any reader failure is one sentence
            problem = read_error(path, error)
        if problem is not None:
            raise DataError(f"subject {subject}: {key} file {path}: {problem}.")
    return given


class Predictor:
    """A loaded checkpoint ready to predict cases from NIfTI files.

    Args:
        checkpoint: ``model.safetensors`` (+ ``model.json``) or a run folder.
        size: in-plane size; default (and only allowed value) the checkpoint's recorded one.
        device: ``auto``, ``cpu``, ``cuda`` ...
        min_voxels, keep_largest: post-processing (:func:`~gliofed.segmentation.postprocess_mask`); ``None``
            (default): what the checkpoint records (chosen on its training cases), else off.
        label_convention: how to label every written mask (``brats``, ``brats2023``, ...); default: each case's
            ``label_convention``, else what its file names imply (BraTS 2023+ names: ``brats2023``; else ``brats``).
        inference: how the volume is segmented (:class:`~gliofed.segmentation.SegmentationInference`; default one
            whole-volume pass).
    """

    def __init__(self, checkpoint: str | Path, size: int | None = None, device: str = "auto",
                 min_voxels: int | None = None, keep_largest: bool | None = None,
                 label_convention: str | None = None, inference: SegmentationInference | None = None) -> None:
        from gliofed.engine import resolve_device
        from gliofed.runs import load_checkpoint

        if min_voxels is not None and min_voxels < 0:
            raise ConfigError(f"--min-component must be 0 (off) or a positive number of voxels, not {min_voxels}.")
        self.device = resolve_device(device)  # a device this machine lacks: refused before the model is read
        self.checkpoint = Path(checkpoint)
        self.model, self.config, state = load_checkpoint(checkpoint)
        self.plan = model_plan(checkpoint, state.get("preprocessing"), size, self.config.modalities)
        self.preprocessing = self.plan.to_dict()
        self.size = self.plan.size
        self.modalities = self.plan.modalities
        #: the decision thresholds chosen on the training split and stored with the model (0.5 where none)
        self.thresholds = state.get("thresholds") or {}
        self.device = resolve_device(device)
        self.model.eval().to(self.device)
        #: the post-processing the checkpoint records (chosen on its training cases; (0, False) when none)
        self.recorded_postprocessing = recorded_postprocessing(state)
        self.min_voxels, self.keep_largest = recorded_postprocessing(state, min_voxels, keep_largest)
        self.label_convention = convention(label_convention).name if label_convention else None
        self.inference = inference or SegmentationInference()

    def decision_rule(self) -> dict:
        """How ``predicted`` was decided, per marker, for the markers JSON: each binary marker's threshold on the
        probability of its second class and where it came from; grade by the most likely class."""
        from gliofed.metrics import THRESHOLD_METHODS, threshold_values

        stored = (self.thresholds or {}).get("markers", {})
        method = THRESHOLD_METHODS.get(self.thresholds.get("method"), self.thresholds.get("method"))
        rule = {}
        for marker, value in threshold_values(self.thresholds).items():
            rule[marker] = {"threshold": value, "class": MARKER_CLASSES[marker][1]}
            if marker in stored:
                rule[marker].update(chosen_by=method, chosen_on=f"{self.thresholds.get('split')} split")
            else:
                rule[marker]["chosen_by"] = "fixed default (the model stores no threshold for this marker)"
        rule["grade"] = {"rule": "most likely class"}
        return rule

    def check_inputs(self, subject: str, paths: Mapping[str, str | Path | None]) -> dict[str, str]:
        """The model's contrasts must all be given, exist and pass :func:`check_scans`; returns key -> path of every
        contrast given."""
        given = {k: str(v) for k, v in paths.items() if k in MODALITIES and v}
        missing = [m for m in self.modalities if m not in given]
        if missing:
            raise ConfigError(f"subject {subject}: the model needs {', '.join(self.modalities)} but "
                              f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing.")
        return check_scans(subject, given)

    def predict_case(self, subject: str, paths: Mapping[str, str | Path | None]) -> dict:
        """Predict one case.

        Args:
            subject: the case's name (used in messages and output names).
            paths: contrast -> NIfTI path; every contrast of the model is required. Contrasts beyond the model's
                are used, as in training, only to find the brain (the crop to non-zero voxels). An optional
                ``label_convention`` names the case's dataset's convention.

        Returns:
            ``{"seg": mask in the scan's own grid (uint8, labels of the case's convention), "labels": the same as
            in-memory classes 0..3, "label_convention": its name, "affine": the FLAIR's (or first given contrast's)
            affine, "header": its NIfTI header, "probabilities": {marker: {class: p}},
            "classes": {marker: class name}}``.
        """
        import nibabel as nib
        import torch
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        from gliofed.segmentation import predict_volume, seg_output_of, to_classes

        given = self.check_inputs(subject, paths)
        keys = [m for m in MODALITIES if m in given]  # training stacks the contrasts in this order
        pipeline = inference_pipeline(keys, self.plan)
        try:
            data = pipeline({"subject_id": subject, **given})
        except Exception as error:  # MONAI wraps transform errors: report the root cause in one line
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if isinstance(cause, DataError):
                raise cause from None
            raise DataError(f"subject {subject}: could not be preprocessed ({first_line(cause)}).") from error
        image = data["image"]  # (C, x, y, z) RAS, cropped, resized, normalised
        channels = [keys.index(m) for m in self.modalities]
        x = image.as_tensor()[channels].permute(0, 3, 2, 1)[None].float().to(self.device)  # (1, C, D, H, W)
        with torch.no_grad():
            probabilities, outputs = predict_volume(self.model, x, self.inference)
        if not all(bool(torch.isfinite(outputs[k]).all()) for k in ("seg", *MARKERS)):
            raise DataError(f"subject {subject}: the model's outputs are NaN or Inf for this case; nothing was "
                            "written for it.")
        classes = to_classes(probabilities, seg_output_of(self.model))[0].to(torch.uint8).cpu().numpy()  # (D, H, W)
        classes = postprocess_mask(classes, self.min_voxels, self.keep_largest)
        pred = MetaTensor(torch.from_numpy(np.ascontiguousarray(classes.transpose(2, 1, 0)))[None].float(),
                          meta=image.meta, applied_operations=image.applied_operations)
        inverted = Invertd("pred", pipeline, orig_keys="image", nearest_interp=True)({"pred": pred, "image": image})
        mask = np.rint(np.asarray(inverted["pred"])[0]).astype(np.uint8)
        reference = "flair" if "flair" in given else keys[0]
        ref_img = nib.load(given[reference])
        if mask.shape != ref_img.shape[:3]:
            raise DataError(f"subject {subject}: the inverted mask has shape {mask.shape}, the {reference} scan "
                            f"{ref_img.shape[:3]} (a preprocessing step could not be inverted).")
        from gliofed.metrics import threshold_values

        probabilities, predicted, cutoffs = {}, {}, threshold_values(self.thresholds)
        for marker in MARKERS:
            p = torch.softmax(outputs[marker].float(), dim=1)[0].cpu().numpy()
            probabilities[marker] = {name: float(p[k]) for k, name in enumerate(MARKER_CLASSES[marker])}
            # binary markers: class 1 at or above the model's threshold; grade: the most likely class
            chosen = int(p[1] >= cutoffs[marker]) if marker in cutoffs else int(np.argmax(p))
            predicted[marker] = MARKER_CLASSES[marker][chosen]
        rules = convention(self.label_convention or paths.get("label_convention")
                           or convention_of_files(given.values()))
        return {"seg": rules.encode(mask), "labels": mask, "label_convention": rules.name, "affine": ref_img.affine,
                "header": ref_img.header, "probabilities": probabilities, "classes": predicted,
                "reference": reference}

    def write_case(self, subject: str, result: dict, out_dir: str | Path) -> dict:
        """Write ``<subject>_seg.nii.gz`` and ``<subject>_markers.json`` (atomically); return the CSV row."""
        import nibabel as nib

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        header = result["header"].copy()
        header.set_data_dtype(np.uint8)
        image = nib.Nifti1Image(result["seg"], result["affine"], header)
        image.set_qform(result["affine"], code=int(result["header"]["qform_code"]) or 1)
        image.set_sform(result["affine"], code=int(result["header"]["sform_code"]) or 1)
        seg_path, markers_path = output_paths(out_dir, subject)
        atomic_write(seg_path, lambda tmp: nib.save(image, tmp), keep_suffix=True)
        markers = {"subject": subject, "checkpoint": str(self.checkpoint), "modalities": list(self.modalities),
                   "label_convention": result.get("label_convention", "brats"),
                   "postprocessing": {"min_voxels": self.min_voxels, "keep_largest": self.keep_largest},
                   "probabilities": result["probabilities"], "predicted": result["classes"],
                   "thresholds": self.decision_rule()}
        atomic_write_text(markers_path, to_json(markers, nan="error", indent=2))
        voxel_ml = float(abs(np.linalg.det(result["affine"][:3, :3]))) / 1000.0
        classes = result["labels"] if "labels" in result else convention("brats").decode(result["seg"])
        row = {"subject": subject, "seg": str(seg_path), "markers": str(markers_path),
               "label_convention": result.get("label_convention", "brats"),
               **{f"volume_{r}_ml": float(np.isin(classes, REGIONS[r]).sum() * voxel_ml) for r in REGIONS}}
        for marker in MARKERS:
            row[f"{marker}_predicted"] = result["classes"][marker]
            for name, p in result["probabilities"][marker].items():
                row[f"p_{marker}_{name}"] = p
        return row


def output_paths(out_dir: str | Path, subject: str) -> tuple[Path, Path]:
    """The files :meth:`Predictor.write_case` writes for ``subject``: (``<subject>_seg.nii.gz``,
    ``<subject>_markers.json``) in ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir / f"{subject}_seg.nii.gz", out_dir / f"{subject}_markers.json"


def check_outputs(out_dir: str | Path, cases: list[dict], overwrite: bool = False,
                  inputs: tuple[str | Path, ...] = ()) -> None:
    """Refuse, before any work, outputs that would lose data or escape their folder.

    - every subject name must be a safe file name (the manifest's rule, :func:`gliofed.data.manifest.unsafe_name`:
      letters, digits, ``.``, ``_``, ``-``, at most 128 characters) and unique;
    - ``out_dir`` may not be a file, nor a folder that holds any case's scans, its ground truth (``seg``) or one of
      ``inputs`` (the manifest);
    - an existing prediction (a case's mask or markers, or ``predictions.csv``) is replaced only with ``overwrite``.

    Args:
        out_dir: the output folder.
        cases: dicts with ``subject_id``, contrast paths and optionally ``seg`` (blank/None where absent).
        overwrite: allow replacing earlier predictions (default False).
        inputs: further input files (the manifest).

    Raises:
        ConfigError: one sentence naming the subject or file.
    """
    from gliofed.data.manifest import unsafe_name

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: the output folder is a file, not a folder.")
    seen: set[str] = set()
    for case in cases:
        subject = str(case["subject_id"])
        reason = unsafe_name(subject)
        if reason is not None:
            raise ConfigError(f"subject name {subject!r} cannot name an output file: not a safe file name ({reason}); "
                              "use letters, digits, '.', '_' and '-' (--subject NAME for one case).")
        if subject in seen:
            raise ConfigError(f"subject name {subject!r} appears twice; each case needs its own output files.")
        seen.add(subject)
    target = out_dir.resolve()
    for case in cases:
        for key in (*MODALITIES, "seg"):
            if case.get(key) and Path(case[key]).resolve().parent == target:
                what = "ground truth" if key == "seg" else f"{key} scan"
                raise ConfigError(f"{out_dir}: the output folder holds subject {case['subject_id']}'s {what} "
                                  f"{Path(case[key]).name}; write predictions to another folder.")
    for path in inputs:
        if path and Path(path).resolve().parent == target:
            raise ConfigError(f"{out_dir}: the output folder holds the input {Path(path).name}; write predictions to "
                              "another folder.")
    if overwrite:
        return
    existing = [out_dir / "predictions.csv", *(p for c in cases for p in output_paths(out_dir, str(c["subject_id"])))]
    found = next((p for p in existing if p.exists()), None)
    if found is not None:
        raise ConfigError(f"{found}: an earlier prediction is there; pass --overwrite to replace it, or choose another "
                          "--out.")


def predict_cases(checkpoint: str | Path, cases: list[dict], out_dir: str | Path, size: int | None = None,
                  device: str = "auto", min_voxels: int | None = None, keep_largest: bool | None = None,
                  progress: bool = True, label_convention: str | None = None,
                  inference: SegmentationInference | None = None, overwrite: bool = False,
                  inputs: tuple[str | Path, ...] = ()) -> pd.DataFrame:
    """Predict every case and write its NIfTI mask, markers JSON and a ``predictions.csv`` row.

    Everything that can be checked is checked before any work: :func:`check_outputs`, every case's scans
    (:func:`check_scans`), then the model and the contrasts it needs (:meth:`Predictor.check_inputs`).

    Args:
        checkpoint: the model (see :class:`Predictor`).
        cases: dicts with ``subject_id``, contrast paths ``t1`` .. ``flair`` and optionally ``seg`` (the ground
            truth, never overwritten; blank/None where absent), and optionally ``label_convention`` (the dataset's;
            the masks are written in it).
        out_dir: the output folder.
        size, device, min_voxels, keep_largest, label_convention, inference: see :class:`Predictor`.
        progress: show a progress bar.
        overwrite: replace earlier predictions in ``out_dir`` (default False: refused).
        inputs: further input files ``out_dir`` may not hold (the manifest).

    Returns:
        the table written to ``out_dir/predictions.csv``.
    """
    from tqdm.auto import tqdm

    check_outputs(out_dir, cases, overwrite, inputs)
    for case in cases:  # scans' headers before the model (and torch) is loaded
        check_scans(str(case["subject_id"]), case)
    predictor = Predictor(checkpoint, size=size, device=device, min_voxels=min_voxels, keep_largest=keep_largest,
                          label_convention=label_convention, inference=inference)
    for case in cases:  # every input checked before any work
        subject = str(case["subject_id"])
        predictor.check_inputs(subject, case)
        if case.get("label_convention"):
            try:
                convention(case["label_convention"])
            except DataError as error:
                raise DataError(f"subject {subject}: {error}") from None
    rows = []
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
        subject = str(case["subject_id"])
        rows.append(predictor.write_case(subject, predictor.predict_case(subject, case), out_dir))
    table = pd.DataFrame(rows)
    write_csv(Path(out_dir) / "predictions.csv", table)
    return table


def subject_name(path: str | Path) -> str:
    """A case name from a scan's file name: ``BraTS_001_flair.nii.gz`` -> ``BraTS_001``,
    ``BraTS-GLI-00000-000-t2f.nii.gz`` -> ``BraTS-GLI-00000-000``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        name = name.removesuffix(suffix)
    suffixes = {s for naming in FILE_SUFFIXES.values() for key, s in naming.items() if key != "seg"}
    for modality in sorted(suffixes, key=len, reverse=True):
        for sep in ("_", "-", "."):
            if name.lower().endswith(sep + modality):
                return name[: -len(modality) - 1]
    return name


def read_cases(path: str | Path) -> list[dict]:
    """The cases of a CSV with ``subject_id`` and any of the ``t1, t1ce, t2, flair`` columns, and ``seg`` when it has
    one (the ground truth, which predictions never overwrite); paths relative to the CSV; a gliofed manifest
    qualifies, with its ``label_convention`` column when it has one. Raises :class:`~gliofed.errors.ManifestError`
    when it cannot be used."""
    from gliofed.errors import ManifestError

    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise ManifestError(f"{path}: not a readable CSV file ({first_line(error)}).") from error
    if "subject_id" not in table or not any(m in table for m in MODALITIES):
        raise ManifestError(f"{path}: needs a subject_id column and at least one of {', '.join(MODALITIES)}.")
    if table.empty:
        raise ManifestError(f"{path}: no cases in this file.")
    root = path.resolve().parent
    cases = []
    for _, row in table.iterrows():
        case = {"subject_id": row["subject_id"].strip()}
        for m in (*MODALITIES, "seg"):
            value = str(row.get(m, "") or "").strip()
            case[m] = str((root / value).resolve()) if value else ""
        case["label_convention"] = str(row.get("label_convention", "") or "").strip().lower()
        cases.append(case)
    return cases
