"""`gliofed check`: every problem of a manifest and its files, one line each.

The volume rules (:func:`volume_problems`) are shared with preprocessing, so a case that ``check``
passes is a case ``preprocess`` can read.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from gliofed.data.conventions import CONVENTIONS, DEFAULT_CONVENTION
from gliofed.data.manifest import _read_raw, absolute_path, label_problems, unsafe_name
from gliofed.data.parallel import process_map
from gliofed.vocab import MODALITIES

__all__ = ["Problem", "CheckReport", "check_manifest", "volume_problems", "load_volume", "read_error", "SEG_VALUES",
           "nifti_size_problem", "max_voxels", "MAX_VOXELS", "MAX_INTENSITY"]

#: segmentation values allowed on disk by the default label convention (BraTS 2017-2021); other conventions:
#: :mod:`gliofed.data.conventions`
SEG_VALUES = CONVENTIONS[DEFAULT_CONVENTION].values
#: most voxels one compressed volume may declare before any of it is read (512^3; a BraTS scan has 8.9 M);
#: the environment variable ``GLIOFED_MAX_VOXELS`` changes it
MAX_VOXELS = 512**3
#: deflate expands data by at most about 1032:1, so a ``.gz`` declaring more than this many bytes per byte is lying
_DEFLATE_MAX_RATIO = 1032
#: largest absolute image intensity accepted: beyond it z-scoring in float32 (sums of squares over millions of
#: voxels) overflows to Inf / NaN; MRI intensities are at most a few 10^5 (and are rescaled when stored as floats)
MAX_INTENSITY = 1e7


def max_voxels() -> int:
    """The voxel cap of a compressed volume: ``GLIOFED_MAX_VOXELS`` when set (a positive integer), else
    :data:`MAX_VOXELS`."""
    text = os.environ.get("GLIOFED_MAX_VOXELS", "").strip()
    if not text:
        return MAX_VOXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        from gliofed.errors import ConfigError

        raise ConfigError(f"GLIOFED_MAX_VOXELS={text!r} is not a positive number of voxels.")
    return value


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:,.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return ""


def nifti_size_problem(path: str | Path, limit: int | None = None) -> str | None:
    """Why a NIfTI file's header declares more data than may be read, or None; reads the header only, so nothing
    of the declared size is allocated.

    An uncompressed file must hold the bytes its header declares; a compressed one cannot expand more than deflate
    allows (about 1032:1) and may declare at most ``limit`` voxels.

    Args:
        path: the NIfTI file (``.nii``, ``.nii.gz``, ``.hdr``/``.img``).
        limit: the voxel cap of a compressed file (default :func:`max_voxels`).

    Returns:
        a phrase naming the declared size and the problem, or None when the size is plausible.

    Raises:
        whatever nibabel raises for a file that is not a readable NIfTI header (callers report it as unreadable).
    """
    image = nib.load(str(path))
    shape = tuple(int(n) for n in image.header.get_data_shape())
    voxels = int(np.prod(shape, dtype=np.float64)) if shape else 0
    declared = voxels * image.header.get_data_dtype().itemsize
    data_file = Path(image.file_map["image"].filename or path)
    on_disk = data_file.stat().st_size
    dims = " x ".join(str(n) for n in shape)
    if str(data_file).endswith((".gz", ".bz2", ".zst")):
        cap = max_voxels() if limit is None else limit
        if declared > _DEFLATE_MAX_RATIO * on_disk:
            return (f"header declares {dims} voxels ({_size(declared)}) but the compressed file has "
                    f"{_size(on_disk)}, which cannot hold them (a damaged or forged file)")
        if voxels > cap:
            return (f"header declares {dims} = {voxels:,} voxels, more than the limit of {cap:,} "
                    "(set GLIOFED_MAX_VOXELS to read larger volumes)")
        return None
    offset = int(image.header.get_data_offset()) if data_file == Path(path) else 0
    if offset + declared > on_disk:
        return (f"header declares {dims} voxels ({_size(declared)}) but the file holds only {_size(on_disk)} "
                "(a truncated or forged file)")
    return None


@dataclass(frozen=True)
class Problem:
    """One problem: the subject, the file (or manifest column) concerned, and what is wrong."""

    subject: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.where}: {self.message}"


@dataclass
class CheckReport:
    """Result of :func:`check_manifest`."""

    manifest: str
    n_subjects: int
    problems: list[Problem]
    summary: pd.DataFrame

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [str(p) for p in self.problems]
        if self.ok:
            lines.append(f"{self.manifest}: {self.n_subjects} subjects, no problems.")
        else:
            lines.append(f"{self.manifest}: {len(self.problems)} problem(s) in {self.n_subjects} subjects.")
        lines.append(self.summary.to_string())
        return "\n".join(lines)


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI file fully; return (data as float32, affine).

    Raises:
        OSError / EOFError / zlib.error / nibabel ImageFileError on unreadable or truncated files.
    """
    image = nib.load(str(path))
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def _gzip_broken(path: str | Path) -> bool:
    """True when a ``.gz`` file does not decompress to its end (truncated download, corrupt copy)."""
    if not str(path).endswith(".gz"):
        return False
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 20):
                pass
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError):
        return True
    return False


def read_error(path: str | Path, error: Exception) -> str:
    """One-phrase reason why ``path`` could not be read."""
    if isinstance(error, FileNotFoundError) or not Path(path).exists():
        return "file not found"
    if _gzip_broken(path):
        return "truncated or corrupt gzip file"
    return f"unreadable NIfTI file ({type(error).__name__}: {error})"


def _seg_value_problem(values: list[float], label_convention: str) -> str:
    """The message for mask values outside the case's label convention (with a hint when they fit another)."""
    rules = CONVENTIONS[label_convention]
    shown = ", ".join(f"{v:g}" for v in values[:5])
    message = f"segmentation values {shown} outside {rules.shown} (label convention {label_convention})"
    if label_convention == "brats" and 3 in values:
        message += "; BraTS 2023+ masks label enhancing tumour 3: set the manifest's label_convention to brats2023"
    elif label_convention == "brats2023" and 4 in values:
        message += ("; a mask with label 4 is BraTS 2024 post-treatment data (4 = resection cavity): "
                    "label_convention brats2024")
    return message


def volume_problems(volumes: dict[str, tuple[np.ndarray, np.ndarray]],
                    label_convention: str = DEFAULT_CONVENTION) -> list[tuple[str, str]]:
    """Consistency rules for one case's loaded volumes.

    Args:
        volumes: key (``t1`` ... ``flair``, ``seg``) -> (data, affine); keys may be missing.
        label_convention: how the mask is labelled (:mod:`gliofed.data.conventions`; default ``brats``): its values
            must be labels of that convention.

    Returns:
        list of (key, message); empty when the case is consistent.
    """
    problems: list[tuple[str, str]] = []
    reference_key = next((k for k in (*MODALITIES, "seg") if k in volumes), None)
    if reference_key is None:
        return problems
    ref_data, ref_affine = volumes[reference_key]
    for key, (data, affine) in volumes.items():
        if data.ndim != 3:
            problems.append((key, f"expected a 3D volume, found shape {data.shape}"))
            continue
        if key != reference_key and data.shape != ref_data.shape:
            problems.append((key, f"shape {data.shape} differs from {reference_key} shape {ref_data.shape}"))
        elif key != reference_key and not np.allclose(affine, ref_affine, atol=1e-3):
            problems.append((key, f"affine differs from {reference_key} affine (not co-registered)"))
        if not np.all(np.isfinite(data)):
            problems.append((key, f"{int(np.sum(~np.isfinite(data)))} NaN/Inf voxels"))
        elif key != "seg" and float(data.max()) == float(data.min()):
            problems.append((key, f"empty modality (every voxel is {float(data.min()):g})"))
        elif key != "seg" and (problem := _intensity_problem(data)) is not None:
            problems.append((key, problem))
        if key == "seg" and np.all(np.isfinite(data)):
            bad = sorted(set(np.unique(data).tolist()) - CONVENTIONS[label_convention].values)
            if bad:
                problems.append((key, _seg_value_problem(bad, label_convention)))
    return problems


def _intensity_problem(data: np.ndarray) -> str | None:
    """Why an image's intensities cannot be z-scored to finite values (as preprocessing does, in float32 over the
    non-zero voxels), or None."""
    largest = float(np.max(np.abs(data)))
    if largest > MAX_INTENSITY:
        return (f"intensities up to {largest:.3g}, beyond the sane range of +/-{MAX_INTENSITY:.0e} (z-scoring would "
                "overflow; rescale the image)")
    brain = np.asarray(data[data != 0], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = brain.mean(), brain.std()
    if brain.size and not (np.isfinite(mean) and np.isfinite(std)):
        return "z-scoring the non-zero voxels gives NaN/Inf values"
    return None


def _check_files(task: tuple[str, dict[str, str], str]) -> list[Problem]:
    subject, paths, label_convention = task
    problems: list[Problem] = []
    volumes = {}
    for key, path in paths.items():
        name = Path(path).name
        if not Path(path).is_file():
            problems.append(Problem(subject, name or key, "file not found"))
            continue
        try:
            too_large = nifti_size_problem(path)  # before any array is made
            if too_large is not None:
                problems.append(Problem(subject, name, too_large))
                continue
            volumes[key] = load_volume(path)
        except Exception as error:  # any reader failure is reported, never raised
            problems.append(Problem(subject, name, read_error(path, error)))
    for key, message in volume_problems(volumes, label_convention):
        problems.append(Problem(subject, Path(paths[key]).name, message))
    return problems


def _summary(raw: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for site, group in raw.groupby("site", sort=True):
        row = {"site": site, "subjects": len(group), "with seg": int((group["seg"].str.strip() != "").sum())}
        for marker in ("idh", "codeletion", "mgmt", "grade"):
            row[f"{marker} known"] = int((group[marker].str.strip() != "").sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index("site") if rows else pd.DataFrame()


def check_manifest(path: str | Path, workers: int = 1, progress: bool = True) -> CheckReport:
    """Check a manifest and every file it names.

    Reports: missing or unreadable files, truncated gzip, headers declaring more data than the file can hold (or
    than :func:`max_voxels`; checked before reading), shape or affine mismatch between a subject's
    modalities, NaN/Inf voxels, intensities beyond :data:`MAX_INTENSITY` (z-scoring would overflow), empty
    modalities, segmentation values outside the row's label convention
    ({0, 1, 2, 4} unless ``label_convention`` says otherwise), invalid label codes, blank required fields, subject
    IDs or sites that are not safe file names, duplicate subject IDs, a subject listed in two splits and a dataset
    whose rows name more than one label convention.

    Args:
        path: manifest CSV.
        workers: processes reading files in parallel (default 1).
        progress: show a progress bar (default True).

    Returns:
        :class:`CheckReport`; ``report.ok`` is True when nothing was found.
    """
    path = Path(path)
    max_voxels()  # a bad GLIOFED_MAX_VOXELS is an error now, not one per file
    raw = _read_raw(path)
    root = path.resolve().parent
    problems: list[Problem] = []
    splits_seen: dict[str, set[str]] = {}
    conventions_seen: dict[str, dict[str, str]] = {}  # dataset -> convention -> first subject naming it
    tasks = []
    for index, row in raw.iterrows():
        subject = row["subject_id"].strip() or f"row {index + 2}"
        if not row["subject_id"].strip():
            problems.append(Problem(subject, "subject_id", "blank subject ID"))
        elif (reason := unsafe_name(row["subject_id"].strip())) is not None:
            problems.append(Problem(subject, "subject_id", f"subject ID is not a safe file name ({reason})"))
        if not row["site"].strip():
            problems.append(Problem(subject, "site", "blank site"))
        elif (reason := unsafe_name(row["site"].strip())) is not None:
            problems.append(Problem(subject, "site", f"site {row['site'].strip()!r} is not a safe name ({reason})"))
        for message in label_problems(row):
            problems.append(Problem(subject, message.split()[0], message))
        split = row["split"].strip()
        if subject in splits_seen:
            if split in splits_seen[subject]:
                problems.append(Problem(subject, "subject_id", "duplicate subject ID"))
            else:
                both = ", ".join(sorted(splits_seen[subject] | {split}))
                problems.append(Problem(subject, "split", f"subject is in two splits ({both})"))
        splits_seen.setdefault(subject, set()).add(split)
        label_convention = str(row.get("label_convention", "") or "").strip().lower() or DEFAULT_CONVENTION
        if label_convention not in CONVENTIONS:  # reported by label_problems; the values are checked as BraTS
            label_convention = DEFAULT_CONVENTION
        elif row["dataset"].strip():
            conventions_seen.setdefault(row["dataset"].strip(), {}).setdefault(label_convention, subject)
        paths = {}
        for key in (*MODALITIES, "seg"):
            value = row[key].strip()
            if value:
                paths[key] = absolute_path(value, root)
            elif key != "seg":
                problems.append(Problem(subject, key, f"no {key} file given"))
        tasks.append((subject, paths, label_convention))
    for dataset, seen in conventions_seen.items():
        if len(seen) > 1:
            first, *others = seen.items()
            problems.append(Problem(others[0][1], "label_convention", f"dataset {dataset!r} mixes label conventions "
                                    f"{', '.join(seen)} ({first[1]} is {first[0]}); a dataset labels every mask "
                                    "one way"))
    for found in process_map(_check_files, tasks, workers, desc="check", unit="subject", progress=progress,
                             chunksize=4):
        problems.extend(found)
    return CheckReport(str(path), len(raw), problems, _summary(raw))

