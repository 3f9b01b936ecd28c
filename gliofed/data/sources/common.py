"""Shared pieces of the dataset adapters: the curated case record, label vocabularies, file discovery."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gliofed.errors import DataError
from gliofed.vocab import MODALITIES

__all__ = ["CuratedCase", "Vocabulary", "VOCABULARIES", "encode", "nifti_problem", "read_table", "find_column",
           "grade_code", "sex_code", "age_value", "apply_label_table", "mask_values", "settle_label_convention"]

#: tokens that mean "unknown" in the public label files (compared case-insensitively)
UNKNOWN_TOKENS = {"", "na", "n/a", "nan", "none", "nos", "nos/nec", "nec", "not available", "not applicable",
                  "unknown", "indeterminate", "-1", "-", "--", "[not available]", "[unknown]"}


@dataclass
class CuratedCase:
    """One case found by an adapter, included or not.

    ``paths`` holds absolute NIfTI paths for the four contrasts and ``seg`` (missing keys = not found);
    ``labels`` the manifest codes (-1 unknown); ``notes`` odd label values that were treated as unknown;
    ``aliases`` IDs of the same patient in other datasets (used by ``--merge`` to remove duplicates);
    ``label_convention`` how its dataset labels masks (:mod:`gliofed.data.conventions`; blank = ``brats``) and
    ``seg_values`` the labels its mask holds (when they were read). A case whose contrasts live in one 4-D file (MSD)
    has ``split_from`` (that file) and ``channels`` (contrast -> index in its 4th axis) instead of contrast paths:
    :meth:`~gliofed.data.sources.CurationResult.write` writes them as 3-D files.
    """

    subject_id: str
    dataset: str
    site: str
    paths: dict[str, str] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=lambda: {"idh": -1, "codeletion": -1, "mgmt": -1, "grade": -1})
    age: float | None = None
    sex: str = ""
    seg_regions: str = ""
    aliases: set[str] = field(default_factory=set)
    source_id: str = ""
    label_convention: str = ""
    seg_values: tuple[int, ...] = ()
    split_from: str = ""
    channels: dict[str, int] = field(default_factory=dict)
    status: str = "included"
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def exclude(self, reason: str) -> None:
        if self.status == "included":
            self.status, self.reason = "excluded", reason


@dataclass(frozen=True)
class Vocabulary:
    """Raw label value (lower-cased, stripped) -> manifest code; anything else is reported and left unknown."""

    marker: str
    codes: Mapping[str, int]


VOCABULARIES: dict[str, Vocabulary] = {
    "idh": Vocabulary("idh", {"wildtype": 0, "wild-type": 0, "wt": 0, "negative": 0, "0": 0,
                              "mutant": 1, "mutated": 1, "mutation": 1, "positive": 1, "1": 1}),
    "codeletion": Vocabulary("codeletion", {"non-codel": 0, "noncodel": 0, "intact": 0, "not codeleted": 0, "0": 0,
                                            "codel": 1, "co-deleted": 1, "codeleted": 1, "co-deletion": 1,
                                            "codeletion": 1, "1": 1}),
    "mgmt": Vocabulary("mgmt", {"unmethylated": 0, "negative": 0, "0": 0, "methylated": 1, "positive": 1, "1": 1}),
}


def _normalise(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    text = str(value).strip().lower()
    return text[:-2] if re.fullmatch(r"-?\d+\.0", text) else text


def encode(marker: str, value: object, case: CuratedCase, vocabulary: Vocabulary | None = None) -> int:
    """Code of ``value`` for ``marker``; known unknown tokens give -1 silently, other odd values give -1 and a
    note on ``case`` (reported in the curation report, never guessed)."""
    text = _normalise(value)
    if text in UNKNOWN_TOKENS:
        return -1
    codes = (vocabulary or VOCABULARIES[marker]).codes
    if text in codes:
        return codes[text]
    case.notes.append(f"{marker} value {str(value).strip()!r} not recognised, treated as unknown")
    return -1


def grade_code(value: object, case: CuratedCase) -> int:
    """WHO grade from ``G2``/``II``/``2``/``grade 4`` ... to 0 (II), 1 (III), 2 (IV)."""
    text = _normalise(value).replace("grade", "").replace("who", "").strip()
    if text in UNKNOWN_TOKENS:
        return -1
    table = {"g2": 0, "ii": 0, "2": 0, "g3": 1, "iii": 1, "3": 1, "g4": 2, "iv": 2, "4": 2}
    if text in table:
        return table[text]
    case.notes.append(f"grade value {str(value).strip()!r} not recognised, treated as unknown")
    return -1


def sex_code(value: object) -> str:
    text = _normalise(value)
    return {"m": "M", "male": "M", "f": "F", "female": "F"}.get(text, "")


def age_value(value: object) -> float | None:
    try:
        age = float(str(value).strip())
    except ValueError:
        return None
    return age if 0 <= age <= 120 else None


def nifti_problem(path: Path) -> str | None:
    """A one-line reason when ``path`` is not a readable NIfTI image (header and shape only; fast)."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        if len(image.shape) < 3:
            return f"{path.name} is not a 3D image"
    except Exception as error:  # noqa: BLE001 - any reader failure is a reason to exclude
        return f"{path.name} is unreadable ({type(error).__name__})"
    return None


def check_files(case: CuratedCase, required: Iterable[str] = MODALITIES) -> None:
    """Exclude ``case`` when a required contrast is missing or a found file is unreadable."""
    missing = [m for m in required if m not in case.paths]
    if missing:
        case.exclude(f"missing modality {', '.join(missing)}")
        return
    for path in case.paths.values():
        problem = nifti_problem(Path(path))
        if problem:
            case.exclude(f"unreadable file: {problem}")
            return


def read_table(path: str | Path, header_row: int | None = None) -> pd.DataFrame:
    """A label table (CSV, TSV or Excel) as strings. ``header_row``: 0-based row of the header; ``None`` finds it
    (the first row whose cells look like column names, e.g. Ceccarelli's table has a title row first)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found.")
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            raw = pd.read_excel(path, header=None, dtype=str)
        else:
            raw = pd.read_csv(path, header=None, dtype=str, sep=None, engine="python", keep_default_na=False)
    except Exception as error:  # noqa: BLE001
        raise DataError(f"{path}: not a readable table ({type(error).__name__}: {error}).") from error
    raw = raw.fillna("")
    if header_row is None:
        filled = (raw.head(10).astype(str).apply(lambda col: col.str.strip() != "")).sum(1)
        header_row = int(filled.idxmax()) if len(filled) else 0
    table = raw.iloc[header_row + 1:].reset_index(drop=True)
    table.columns = [str(c).strip() for c in raw.iloc[header_row]]
    return table


def find_column(table: pd.DataFrame, *candidates: str, path: str | Path = "", required: bool = True) -> str | None:
    """The first column of ``table`` whose name starts with one of ``candidates`` (case-insensitive)."""
    lowered = {c.lower(): c for c in table.columns}
    for candidate in candidates:
        for name, original in lowered.items():
            if name == candidate.lower() or name.startswith(candidate.lower()):
                return original
    if required:
        raise DataError(f"{path}: no column {candidates[0]!r} (columns: {', '.join(table.columns)}).")
    return None


def apply_label_table(path: str | Path, cases: Mapping[str, CuratedCase], columns: Mapping[str, Sequence[str]],
                      key: Callable[[object], str | None] = lambda value: str(value).strip(),
                      vocabularies: Mapping[str, Vocabulary] | None = None,
                      extra: Callable[[CuratedCase, pd.Series], None] | None = None) -> None:
    """Read a label table and set the labels of the matching cases.

    Args:
        cases: case key -> case.
        columns: ``id`` (required) and optionally ``grade``, ``idh``, ``codeletion``, ``mgmt``, ``age``, ``sex``
            -> candidate column names (first match by prefix, case-insensitive).
        key: turns a table ID into a case key (e.g. zero-padding); rows whose key matches no case are ignored.
        vocabularies: per-marker vocabularies overriding :data:`VOCABULARIES`.
        extra: called with (case, row) for dataset-specific columns.
    """
    table = read_table(path)
    ids = find_column(table, *columns["id"], path=path)
    found = {name: find_column(table, *candidates, path=path, required=False)
             for name, candidates in columns.items() if name != "id"}
    for _, row in table.iterrows():
        case = cases.get(key(row[ids]) or "")
        if case is None:
            continue
        for name, column in found.items():
            if column is None:
                continue
            value = row[column]
            if name == "grade":
                case.labels["grade"] = grade_code(value, case)
            elif name in ("idh", "codeletion", "mgmt"):
                case.labels[name] = encode(name, value, case, (vocabularies or {}).get(name))
            elif name == "age":
                case.age = age_value(value)
            elif name == "sex":
                case.sex = sex_code(value)
        if extra is not None:
            extra(case, row)


def mask_values(path: str | Path) -> tuple[int, ...]:
    """The distinct labels of a mask file (sorted).

    Raises:
        ValueError: a value that is not a whole number (a probability map or a resampled mask).
    """
    import nibabel as nib
    import numpy as np

    data = np.asanyarray(nib.load(str(path)).dataobj)
    values = np.unique(data)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise ValueError("holds values that are not whole-number labels")
    return tuple(int(v) for v in values)


def settle_label_convention(cases: Sequence[CuratedCase], forced: str | None = None, progress: bool = True) -> str:
    """Decide the dataset's label convention from its file names and confirm it from its masks' values.

    Every included case with a mask is read once (its distinct values go to ``case.seg_values``). Without
    ``forced``: BraTS 2023+ file names give ``brats2023``, or ``brats2024`` when some mask holds label 4 (the
    post-treatment release's resection cavity); the older names give ``brats``, or ``brats2023`` when the masks use
    3 and never 4 (a BraTS 2023+ release renamed to the old pattern). Every case gets the convention; a case whose
    mask holds a value outside it is excluded with the reason.

    Args:
        cases: one dataset's cases (``label_convention`` set from their layout: ``brats`` or ``brats2023`` from
            the file names, ``msd``).
        forced: a convention chosen by the user (``gliofed curate --label-convention``), or None.
        progress: show a progress bar while reading the masks.

    Returns:
        the convention.

    Raises:
        DataError: the cases follow both file namings (two releases under one root).
    """
    from tqdm.auto import tqdm

    from gliofed.data.conventions import CONVENTIONS, DEFAULT_CONVENTION, convention

    namings = {c.label_convention or DEFAULT_CONVENTION for c in cases}
    if len(namings) > 1 and forced is None:
        examples = {c.label_convention or DEFAULT_CONVENTION: c.source_id for c in cases}
        raise DataError(f"the folder holds cases named like BraTS 2017-2021 ({examples['brats']}) and like BraTS "
                        f"2023+ ({examples['brats2023']}); curate each release into its own manifest and combine them "
                        "with --merge.")
    with_masks = [c for c in cases if c.status == "included" and "seg" in c.paths]
    for case in tqdm(with_masks, desc="read masks", unit="mask", disable=not progress or len(with_masks) < 20):
        try:
            case.seg_values = mask_values(case.paths["seg"])
        except Exception as error:  # noqa: BLE001 - any reader failure excludes the case, with the reason
            case.exclude(f"unreadable mask: {Path(case.paths['seg']).name} "
                         f"{error if isinstance(error, ValueError) else type(error).__name__}")
    seen = set().union(*(c.seg_values for c in with_masks if c.status == "included"))
    if forced is not None:
        name = convention(forced).name
    elif namings == {"brats2023"}:
        name = "brats2024" if 4 in seen else "brats2023"
    elif namings == {DEFAULT_CONVENTION}:
        name = "brats2023" if 3 in seen and 4 not in seen else DEFAULT_CONVENTION
    else:  # a layout with its own convention (MSD)
        name = convention(namings.pop()).name
    allowed = CONVENTIONS[name].values
    for case in cases:
        case.label_convention = name
        bad = sorted(set(case.seg_values) - allowed)
        if bad:
            case.exclude(f"segmentation values {', '.join(map(str, bad))} outside {CONVENTIONS[name].shown} "
                         f"(label convention {name}: {CONVENTIONS[name].description})")
    return name
