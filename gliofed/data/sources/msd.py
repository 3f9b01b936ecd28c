"""Medical Segmentation Decathlon, Task01_BrainTumour (``--source msd``): 4-D images and their own label order.

Layout: ``<root>/dataset.json``, ``imagesTr/BRATS_NNN.nii.gz`` (4-D: the contrasts along the 4th axis, in the order
of ``dataset.json``'s ``modality``: FLAIR, T1w, t1gd, T2w), ``labelsTr/BRATS_NNN.nii.gz`` (0 background, 1 oedema,
2 non-enhancing tumour, 3 enhancing tumour: the order of ``dataset.json``'s ``labels``, checked) and
``imagesTs/`` (no labels). Only the cases ``dataset.json`` lists are read (the archive also holds macOS ``._*``
files). The contrasts are written once as 3-D NIfTI files beside the manifest when it is written (gliofed reads
one contrast per file); the masks are used as they are, read with the ``msd`` label convention.
"""

from __future__ import annotations

import json
from pathlib import Path

from gliofed.data.sources.common import CuratedCase, nifti_problem
from gliofed.errors import DataError
from gliofed.vocab import MODALITIES

__all__ = ["curate_msd", "MSD_MODALITIES", "MSD_LABELS"]

#: a ``modality`` name of dataset.json (lower case) -> gliofed's contrast
MSD_MODALITIES = {"flair": "flair", "t2-flair": "flair", "t1w": "t1", "t1": "t1", "t1gd": "t1ce", "t1c": "t1ce",
                  "t1ce": "t1ce", "t2w": "t2", "t2": "t2"}
#: the label order gliofed's ``msd`` convention reads (dataset.json's ``labels``, compared without case or spelling
#: variants)
MSD_LABELS = {"0": ("background",), "1": ("edema", "oedema"), "2": ("non-enhancing tumor", "non-enhancing tumour"),
              "3": ("enhancing tumour", "enhancing tumor")}


def _read_description(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(f"{root}: no dataset.json (an MSD task folder holds dataset.json, imagesTr/ and labelsTr/).")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error}).") from error
    if not isinstance(description, dict) or not isinstance(description.get("modality"), dict):
        raise DataError(f"{path}: has no 'modality' table.")
    return description


def _channels(description: dict, path: Path) -> dict[str, int]:
    """Contrast -> index in the images' 4th axis, from dataset.json's ``modality``."""
    channels: dict[str, int] = {}
    for index, name in description["modality"].items():
        contrast = MSD_MODALITIES.get(str(name).strip().lower())
        if contrast is None or contrast in channels or not str(index).isdigit():
            raise DataError(f"{path}: modality {index}: {name!r} is not one of FLAIR, T1w, t1gd, T2w (or is repeated).")
        channels[contrast] = int(index)
    missing = [m for m in MODALITIES if m not in channels]
    if missing:
        raise DataError(f"{path}: its modality table lacks {', '.join(missing)}.")
    return channels


def _check_labels(description: dict, path: Path) -> None:
    labels = {str(k): str(v).strip().lower() for k, v in (description.get("labels") or {}).items()}
    expected = {k: names[0] for k, names in MSD_LABELS.items()}
    if set(labels) != set(MSD_LABELS) or any(labels[k] not in MSD_LABELS[k] for k in MSD_LABELS):
        raise DataError(f"{path}: labels {labels} differ from Task01's {expected}; gliofed's msd label convention "
                        "reads only that order.")


def _relative(root: Path, entry: object, path: Path) -> Path:
    text = str(entry).strip()
    if not text or Path(text).is_absolute() or ".." in Path(text).parts:
        raise DataError(f"{path}: {text!r} is not a path inside the task folder.")
    return root / text


def curate_msd(root: str | Path, labels: list[str] | None = None, site: str | None = None) -> list[CuratedCase]:
    """Every case ``dataset.json`` lists under ``training`` (with its label) and ``test`` (without)."""
    if labels:
        raise DataError("--source msd takes no label files (its labels are in dataset.json).")
    root = Path(root)
    description = _read_description(root)
    path = root / "dataset.json"
    channels = _channels(description, path)
    _check_labels(description, path)
    entries = [(e.get("image"), e.get("label")) if isinstance(e, dict) else (None, None)
               for e in description.get("training") or []]
    entries += [(e, None) for e in description.get("test") or []]
    cases = []
    for image, label in entries:
        if image is None:
            raise DataError(f"{path}: a 'training' entry lacks its 'image'.")
        image_path = _relative(root, image, path)
        name = image_path.name.removesuffix(".gz").removesuffix(".nii")
        case = CuratedCase(name, "msd-task01", site or "msd-task01", source_id=name, label_convention="msd",
                           split_from=str(image_path), channels=dict(channels))
        if label is not None:
            case.paths["seg"] = str(_relative(root, label, path))
        _check_case(case)
        cases.append(case)
    return cases


def _check_case(case: CuratedCase) -> None:
    """Exclude a case whose 4-D image is missing, unreadable or has another number of contrasts, or whose label is
    missing or unreadable (headers only)."""
    import nibabel as nib

    image = Path(case.split_from)
    if not image.is_file():
        case.exclude(f"missing image {image.name}")
        return
    try:
        shape = nib.load(str(image)).shape
    except Exception as error:  # noqa: BLE001 - any reader failure excludes the case
        case.exclude(f"unreadable file: {image.name} is unreadable ({type(error).__name__})")
        return
    if len(shape) != 4 or shape[3] != len(case.channels):
        case.exclude(f"{image.name} has shape {shape}, not 4-D with {len(case.channels)} contrasts")
        return
    if "seg" in case.paths:
        label = Path(case.paths["seg"])
        problem = f"missing label {label.name}" if not label.is_file() else nifti_problem(label)
        if problem:
            case.exclude(problem if problem.startswith("missing") else f"unreadable file: {problem}")
