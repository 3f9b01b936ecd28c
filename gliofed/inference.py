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
from gliofed.vocab import MARKER_CLASSES, MARKERS, MODALITIES, REGIONS

__all__ = ["Predictor", "inference_pipeline", "postprocess_mask", "predict_cases", "read_cases", "subject_name",
           "preprocessing_of_cache", "check_preprocessing", "check_outputs", "check_scans", "output_paths",
           "BRATS_LABELS"]

#: in-memory class -> BraTS 2017-2021 label (the default convention; others: :mod:`gliofed.data.conventions`)
BRATS_LABELS = CONVENTIONS["brats"].encode(np.arange(4))


def inference_pipeline(modalities, size: int):
    """The training preprocessing for the given contrasts, without a mask, with every spatial step recorded so
    that :class:`~monai.transforms.Invertd` can undo it. Identical step for step to
    :func:`gliofed.data.transforms.preprocess_pipeline` (tested: same image as the cache)."""
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        Resized,
    )

    from gliofed.data.transforms import FiniteImaged, ValidateCased

    keys = list(modalities)
    return Compose([
        LoadImaged(keys, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(keys, channel_dim="no_channel"),
        ValidateCased(keys),
        # stack first, then orient the stack: equal to orienting each contrast (they share one grid, validated), and
        # Invertd can only undo transforms recorded on the key it inverts
        ConcatItemsd(keys, name="image"),
        Orientationd("image", axcodes="RAS", labels=None),
        CropForegroundd("image", source_key="image", allow_smaller=True),
        Resized("image", spatial_size=(size, size, -1), mode="area"),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        FiniteImaged("image", channels=keys),
    ])


def preprocessing_of_cache(cache_dir: str | Path, modalities) -> dict:
    """What a model trained on ``cache_dir`` expects of its input: in-plane ``size``, ``modalities`` (in channel
    order), the preprocessing ``version`` and the steps, recorded in every checkpoint so that ``evaluate`` and
    ``predict`` re-create exactly that input."""
    from gliofed.data.cache import PREPROCESS_VERSION, read_index

    index = read_index(cache_dir, missing_ok=True)
    sizes = sorted({int(v) for v in index["height"]} | {int(v) for v in index["width"]}) if len(index) else []
    return {"size": sizes[0] if len(sizes) == 1 else None, "modalities": list(modalities),
            "version": PREPROCESS_VERSION,
            "steps": "RAS orientation, crop to non-zero voxels, in-plane resize (area), z-score per contrast over "
                     "brain voxels, (C, D, H, W)"}


def check_preprocessing(checkpoint: str | Path, recorded: dict | None, size: int | None) -> int | None:
    """The in-plane size to use with a checkpoint: ``size`` if given and equal to the recorded one, else the
    recorded one. Raises :class:`ConfigError` on a mismatch (the model would see inputs it was not trained on).

    Args:
        checkpoint: the checkpoint's path (for the message).
        recorded: the checkpoint's ``preprocessing`` (empty for checkpoints that recorded none).
        size: the size the user asked for, or None.

    Returns:
        the size, or None when neither the user nor the checkpoint gives one.
    """
    from gliofed.data.cache import PREPROCESS_VERSION

    recorded = recorded or {}
    saved = recorded.get("size")
    if size is not None and saved is not None and int(size) != int(saved):
        raise ConfigError(f"{checkpoint}: the model was trained on {saved}x{saved} in-plane inputs but --size {size} "
                          f"was given; leave --size out to use {saved}.")
    version = recorded.get("version")
    if version is not None and int(version) != PREPROCESS_VERSION:
        raise ConfigError(f"{checkpoint}: the model was trained with preprocessing version {version}, this gliofed "
                          f"preprocesses with version {PREPROCESS_VERSION}; use the gliofed release it was trained "
                          "with.")
    return int(size) if size is not None else (int(saved) if saved is not None else None)


def postprocess_mask(labels: np.ndarray, min_voxels: int = 0, keep_largest: bool = False) -> np.ndarray:
    """BraTS-style clean-up of a predicted class map: connected components of the whole tumour (any non-zero class,
    26-connectivity) smaller than ``min_voxels`` are set to background; with ``keep_largest`` only the largest
    component stays. Off (returns a copy) when ``min_voxels <= 0`` and not ``keep_largest``.

    Args:
        labels: integer class map (any shape, usually (D, H, W)).
        min_voxels: smallest component kept.
        keep_largest: keep only the largest component.

    Returns:
        the cleaned class map (same dtype).
    """
    from scipy import ndimage

    labels = np.array(labels, copy=True)
    if min_voxels <= 0 and not keep_largest:
        return labels
    components, count = ndimage.label(labels > 0, structure=np.ones((3,) * labels.ndim))
    if count == 0:
        return labels
    sizes = np.bincount(components.ravel())[1:]
    keep = sizes >= max(min_voxels, 1)
    if keep_largest:
        keep = np.zeros_like(keep)
        keep[int(np.argmax(sizes))] = True
    labels[~np.concatenate([[True], keep])[components]] = 0
    return labels


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
        min_voxels, keep_largest: optional post-processing (:func:`postprocess_mask`), off by default.
        label_convention: how to label every written mask (``brats``, ``brats2023``, ...); default: each case's
            ``label_convention``, else what its file names imply (BraTS 2023+ names: ``brats2023``; else ``brats``).
    """

    def __init__(self, checkpoint: str | Path, size: int | None = None, device: str = "auto", min_voxels: int = 0,
                 keep_largest: bool = False, label_convention: str | None = None) -> None:
        from gliofed.engine import resolve_device
        from gliofed.runs import load_checkpoint

        if min_voxels < 0:
            raise ConfigError(f"--min-component must be 0 (off) or a positive number of voxels, not {min_voxels}.")
        self.device = resolve_device(device)  # a device this machine lacks: refused before the model is read
        self.checkpoint = Path(checkpoint)
        self.model, self.config, state = load_checkpoint(checkpoint)
        self.preprocessing = state.get("preprocessing") or {}
        self.size = check_preprocessing(checkpoint, self.preprocessing, size)
        if self.size is None:
            raise ConfigError(f"{checkpoint}: the checkpoint records no input size; give --size (the in-plane size "
                              "it was trained at).")
        self.modalities = tuple(self.preprocessing.get("modalities") or self.config.modalities)
        self.model.eval().to(self.device)
        self.min_voxels, self.keep_largest = min_voxels, keep_largest
        self.label_convention = convention(label_convention).name if label_convention else None

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

        given = self.check_inputs(subject, paths)
        keys = [m for m in MODALITIES if m in given]  # training stacks the contrasts in this order
        pipeline = inference_pipeline(keys, self.size)
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
            outputs = self.model(x)
        if not all(bool(torch.isfinite(outputs[k]).all()) for k in ("seg", *MARKERS)):
            raise DataError(f"subject {subject}: the model's outputs are NaN or Inf for this case; nothing was "
                            "written for it.")
        classes = outputs["seg"].float().argmax(1)[0].to(torch.uint8).cpu().numpy()  # (D, H, W)
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
        probabilities, predicted = {}, {}
        for marker in MARKERS:
            p = torch.softmax(outputs[marker].float(), dim=1)[0].cpu().numpy()
            probabilities[marker] = {name: float(p[k]) for k, name in enumerate(MARKER_CLASSES[marker])}
            predicted[marker] = MARKER_CLASSES[marker][int(np.argmax(p))]
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
                   "probabilities": result["probabilities"], "predicted": result["classes"]}
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
                  device: str = "auto", min_voxels: int = 0, keep_largest: bool = False,
                  progress: bool = True, label_convention: str | None = None, overwrite: bool = False,
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
        size, device, min_voxels, keep_largest, label_convention: see :class:`Predictor`.
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
                          label_convention=label_convention)
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
