"""BraTS: any ``<case>/<case>_<modality>.nii.gz`` tree (2018-2021 naming) and BraTS 2021 with the RSNA MGMT labels
and the TCIA mapping file."""

from __future__ import annotations

import re
from pathlib import Path

from gliofed.data.sources.common import (
    CuratedCase,
    check_files,
    encode,
    find_column,
    read_table,
)

__all__ = ["curate_brats", "curate_brats2021", "RSNA_PROBLEM_CASES"]

_SUFFIXES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}
#: RSNA-MICCAI MGMT cases reported as problematic by the challenge organisers: their MGMT label is not used
RSNA_PROBLEM_CASES = ("00109", "00123", "00709")
#: patient IDs of the collections BraTS 2021 overlaps with (found anywhere in a mapping-file row)
ALIAS_PATTERNS = (re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}"), re.compile(r"UPENN-GBM-\d{5}"),
                  re.compile(r"UCSF-PDGM-\d{3,4}"))


def _case_folders(root: Path) -> list[Path]:
    """Folders ``X`` holding at least one ``X_<modality>.nii.gz`` (any depth), sorted."""
    found = set()
    for path in root.rglob("*.nii*"):
        folder = path.parent
        if any(path.name.lower() in (f"{folder.name.lower()}_{s}.nii.gz", f"{folder.name.lower()}_{s}.nii")
               for s in _SUFFIXES):
            found.add(folder)
    return sorted(found)


def curate_brats(root: str | Path, dataset: str = "brats", site: str | None = None) -> list[CuratedCase]:
    """Every case folder of a BraTS-style tree; other files in a case folder (predictions, extra masks) are ignored."""
    cases = []
    for folder in _case_folders(Path(root)):
        case = CuratedCase(folder.name, dataset, site or dataset, source_id=folder.name)
        for key, suffix in _SUFFIXES.items():
            for ext in (".nii.gz", ".nii"):
                candidate = folder / f"{folder.name}_{suffix}{ext}"
                if candidate.is_file():
                    case.paths[key] = str(candidate)
                    break
        check_files(case)
        cases.append(case)
    return cases


def normalise_brats21_id(value: object) -> str | None:
    """``109``, ``00109``, ``BraTS2021_00109`` -> ``BraTS2021_00109`` (RSNA reads IDs as integers)."""
    match = re.search(r"(\d+)(?:\.0)?$", str(value).strip())
    return f"BraTS2021_{int(match.group(1)):05d}" if match else None


def curate_brats2021(root: str | Path, labels: list[str] | None = None, site: str | None = None) -> list[CuratedCase]:
    """BraTS 2021 Task 1 (release or TCIA layout). ``labels``: the RSNA ``train_labels.csv`` (``BraTS21ID``,
    ``MGMT_value``) and/or ``BraTS2021_MappingToTCIA.xlsx`` (collection and source patient IDs), recognised by
    their columns."""
    cases = curate_brats(root, "brats2021", site)
    by_id = {c.subject_id: c for c in cases}
    for path in labels or []:
        table = read_table(path)
        mgmt_column = find_column(table, "MGMT_value", required=False)
        if mgmt_column is not None:
            id_column = find_column(table, "BraTS21ID", "BraTS21 ID", path=path)
            for _, row in table.iterrows():
                case = by_id.get(normalise_brats21_id(row[id_column]) or "")
                if case is None:
                    continue
                if case.subject_id.split("_")[-1] in RSNA_PROBLEM_CASES:
                    case.notes.append("RSNA MGMT case known to be problematic: MGMT label not used")
                    continue
                case.labels["mgmt"] = encode("mgmt", row[mgmt_column], case)
            continue
        id_column = find_column(table, "BraTS2021 ID", "BraTS2021", path=path)
        collection = find_column(table, "Data Collection", path=path, required=False)
        for _, row in table.iterrows():
            case = by_id.get(normalise_brats21_id(row[id_column]) or "")
            if case is None:
                continue
            text = " ".join(str(v) for v in row.to_numpy())
            for pattern in ALIAS_PATTERNS:
                case.aliases.update(_canonical_alias(m) for m in pattern.findall(text))
            if collection and str(row[collection]).strip():
                case.notes.append(f"collection {str(row[collection]).strip()}")
    return cases


def _canonical_alias(patient: str) -> str:
    """UCSF-PDGM IDs come with 3 or 4 digits: compare them as 4."""
    match = re.fullmatch(r"UCSF-PDGM-(\d+)", patient)
    return f"UCSF-PDGM-{int(match.group(1)):04d}" if match else patient
