"""The manifest: one row per subject, the single entry point of every dataset into gliofed.

Schema (documented for users in ``data_manifests/README.md``):

========== ===========================================================================
column     meaning
========== ===========================================================================
subject_id unique subject (= patient) identifier; a safe file name (letters, digits, ``.``, ``_``, ``-``)
dataset    source dataset, e.g. ``synthetic``, ``brats2021``, ``upenn-gbm``
site       institution / federated site the subject belongs to; a safe file name, as ``subject_id``
t1 .. flair NIfTI paths of the four contrasts, relative to the manifest file
seg        NIfTI segmentation (labels of the row's ``label_convention``), blank when the subject has none
idh        0 wildtype, 1 mutant, blank unknown
codeletion 0 1p/19q intact, 1 co-deleted, blank unknown
mgmt       0 unmethylated, 1 methylated, blank unknown
grade      WHO grade coded 0 = II, 1 = III, 2 = IV, blank unknown
age        years, blank unknown
sex        ``M`` / ``F``, blank unknown
split      ``train``, ``test`` or ``external``, blank = assign later (seeded, stratified by site)
========== ===========================================================================

Optional columns: ``seg_regions`` (``WT`` = binary whole-tumour mask) and ``label_convention`` (how the masks are
labelled, one per dataset: ``brats`` when blank, ``brats2023``, ``brats2024``, ``msd``; see
:mod:`gliofed.data.conventions`).

In memory, unknown marker labels are ``-1`` (ignored by losses and metrics), unknown age is NaN and
paths are absolute.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from gliofed.data.conventions import CONVENTIONS, DEFAULT_CONVENTION
from gliofed.errors import ManifestError
from gliofed.fileio import write_csv
from gliofed.vocab import MARKER_CLASSES, MARKERS, MODALITIES, SPLITS

__all__ = [
    "COLUMNS",
    "read_manifest",
    "write_manifest",
    "label_problems",
    "unsafe_name",
    "check_safe_names",
    "absolute_path",
    "relative_path",
    "manifest_fingerprint",
]

COLUMNS: tuple[str, ...] = (
    "subject_id", "dataset", "site", "t1", "t1ce", "t2", "flair", "seg",
    "idh", "codeletion", "mgmt", "grade", "age", "sex", "split",
)
_PATH_COLUMNS = (*MODALITIES, "seg")
_SEXES = ("M", "F")


#: characters allowed in a subject ID or site name: they become file names in the cache and run folders
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: longest allowed subject ID or site name (file systems allow 255 bytes per name; suffixes are added)
MAX_NAME_LENGTH = 128


def unsafe_name(value: str) -> str | None:
    """Why ``value`` may not be used as a subject ID or site name (a file name), or None when it is safe.

    Safe names are 1 to 128 characters of letters, digits, ``.``, ``_`` and ``-``, starting with a letter or
    digit, and contain no ``..``: no path separators, no absolute paths, nothing that leaves a folder.

    >>> unsafe_name("BraTS2021_00000") is None
    True
    >>> unsafe_name("../../x")
    'contains ".."'
    """
    if not value:
        return "empty"
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or PureWindowsPath(value).drive:
        return "an absolute path"
    if ".." in value:
        return 'contains ".."'
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if len(value) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters"
    if not SAFE_NAME.fullmatch(value):
        bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        if bad:
            return f"character(s) {' '.join(repr(c) for c in bad[:5])} outside letters, digits, '.', '_', '-'"
        return "must start with a letter or digit"
    return None


def check_safe_names(manifest: pd.DataFrame, source: str | Path) -> None:
    """Raise :class:`ManifestError` naming the first manifest row whose subject ID or site is not a safe name.

    Args:
        manifest: a manifest as returned by :func:`read_manifest` (row ``i`` is CSV line ``i + 2``).
        source: the manifest file, for the message.
    """
    for number, (subject, site) in enumerate(zip(manifest["subject_id"], manifest["site"]), start=2):
        for column, value in (("subject_id", subject), ("site", site)):
            reason = unsafe_name(str(value))
            if reason is not None:
                raise ManifestError(f"{source}: row {number}: {column} {str(value)!r} is not a safe file name "
                                    f"({reason}); run `gliofed check` to list every problem.")


def manifest_fingerprint(path: str | Path) -> str:
    """The manifest file's SHA-256 in 16 hex digits (its bytes: a copy elsewhere has the same fingerprint)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def absolute_path(value: str, base: str | Path) -> str:
    """A manifest path cell as an absolute, resolved path string (relative cells are relative to ``base``).

    Returns ``""`` for a blank cell.
    """
    value = str(value).strip()
    return str((Path(base) / value).resolve()) if value else ""


def relative_path(value: str, root: str | Path) -> str:
    """A path as written into a manifest at ``root``: POSIX-relative when inside ``root``, else absolute.

    Returns ``""`` for a blank value.
    """
    if not value:
        return ""
    target, root = Path(value).resolve(), Path(root).resolve()
    return target.relative_to(root).as_posix() if target.is_relative_to(root) else str(target)


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _parse_code(value: object, allowed: int) -> int | None:
    """Parse a marker cell: blank -> -1, an integer code in range -> code, anything else -> None."""
    if _blank(value):
        return -1
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return None
    if not number.is_integer() or not (0 <= number < allowed) and number != -1:
        return None
    return int(number)


def label_problems(row: pd.Series) -> list[str]:
    """Every invalid label value of one raw manifest row, as messages (empty when the row is valid)."""
    problems = []
    for marker, classes in MARKER_CLASSES.items():
        if _parse_code(row.get(marker, ""), len(classes)) is None:
            allowed = ", ".join(str(i) for i in range(len(classes)))
            problems.append(f"{marker} value {str(row[marker]).strip()!r} is not one of {allowed} or blank")
    age = row.get("age", "")
    if not _blank(age):
        try:
            if not 0 <= float(age) <= 120:
                raise ValueError
        except ValueError:
            problems.append(f"age value {str(age).strip()!r} is not a number of years between 0 and 120")
    sex = row.get("sex", "")
    if not _blank(sex) and str(sex).strip().upper() not in _SEXES:
        problems.append(f"sex value {str(sex).strip()!r} is not M, F or blank")
    split = row.get("split", "")
    if not _blank(split) and str(split).strip() not in SPLITS:
        problems.append(f"split value {str(split).strip()!r} is not one of {', '.join(SPLITS)} or blank")
    labels = row.get("label_convention", "")
    if not _blank(labels) and str(labels).strip().lower() not in CONVENTIONS:
        problems.append(f"label_convention value {str(labels).strip()!r} is not one of {', '.join(CONVENTIONS)} or "
                        "blank")
    return problems


def _read_raw(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found.")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not a readable CSV file ({error}).") from error
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise ManifestError(f"{path}: manifest lacks the column(s) {', '.join(missing)}.")
    return raw


def read_manifest(path: str | Path, strict: bool = True) -> pd.DataFrame:
    """Read a manifest CSV into memory encoding.

    Args:
        path: the manifest file.
        strict: raise :class:`ManifestError` on the first invalid label value (default ``True``);
            with ``False`` invalid values become unknown (-1) — use :func:`gliofed.data.check` to list them.

    Returns:
        DataFrame with the :data:`COLUMNS`, ``seg_regions`` (optional column, ``""`` or ``"WT"``) and
        ``label_convention`` (optional column; blank -> ``"brats"``); absolute paths (``""`` where blank), integer
        marker codes
        with -1 for unknown, float ``age`` (NaN unknown), ``sex`` and ``split`` as strings.

    >>> df = read_manifest("cohort/manifest.csv")  # doctest: +SKIP
    """
    path = Path(path)
    raw = _read_raw(path)
    root = path.resolve().parent
    if strict:
        for _, row in raw.iterrows():
            problems = label_problems(row)
            if problems:
                raise ManifestError(f"{path}: subject {row['subject_id']}: {problems[0]}.")
    df = pd.DataFrame({c: raw[c].str.strip() for c in COLUMNS})
    # optional: "WT" marks a binary whole-tumour mask (e.g. EGD), blank = BraTS labels 0/1/2/4
    df["seg_regions"] = raw["seg_regions"].str.strip().str.upper() if "seg_regions" in raw else ""
    # optional: how the masks are labelled (gliofed.data.conventions); blank = BraTS 2017-2021 (ET = 4)
    conventions = raw["label_convention"].str.strip().str.lower() if "label_convention" in raw else ""
    df["label_convention"] = conventions
    df.loc[df["label_convention"] == "", "label_convention"] = DEFAULT_CONVENTION
    for column in _PATH_COLUMNS:
        df[column] = [absolute_path(p, root) for p in df[column]]
    for marker, classes in MARKER_CLASSES.items():
        df[marker] = [(_parse_code(v, len(classes)) if _parse_code(v, len(classes)) is not None else -1)
                      for v in df[marker]]
        df[marker] = df[marker].astype(np.int64)
    df["age"] = pd.to_numeric(df["age"], errors="coerce").astype(float)
    df["sex"] = df["sex"].str.upper()
    df.attrs["path"] = str(path)
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write an in-memory manifest to CSV with paths relative to the file and blanks for unknowns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.resolve().parent
    out = pd.DataFrame(index=df.index)
    for column in COLUMNS:
        values = df[column] if column in df.columns else pd.Series([""] * len(df), index=df.index)
        if column in _PATH_COLUMNS:
            values = [relative_path(p, root) for p in values]
        elif column in MARKERS:
            values = ["" if int(v) < 0 else str(int(v)) for v in values]
        elif column == "age":
            values = ["" if pd.isna(v) else f"{float(v):g}" for v in values]
        else:
            values = ["" if _blank(v) else str(v) for v in values]
        out[column] = values
    return write_csv(path, out)
