"""REMBRANDT (user-converted NIfTI), UCSF-PDGM and the Erasmus Glioma Database (EGD)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gliofed.data.sources.common import (
    CuratedCase,
    Vocabulary,
    age_value,
    apply_label_table,
    check_files,
    encode,
    grade_code,
    sex_code,
)
from gliofed.errors import DataError

__all__ = ["curate_rembrandt", "curate_ucsf", "curate_egd"]


def curate_rembrandt(root: str | Path, labels: list[str] | None = None, site: str | None = None) -> list[CuratedCase]:
    """REMBRANDT after the user's DICOM-to-NIfTI conversion: ``<root>/<subject>/<subject>_{t1,t1ce,t2,flair}.nii.gz``
    (no masks) and a table with a subject column (``subject_id`` / ``Sample`` / ``Patient``) and ``Grade``,
    ``Age``, ``Gender``. REMBRANDT records no IDH, 1p/19q or MGMT."""
    from gliofed.data.sources.brats import curate_brats

    cases = curate_brats(root, "rembrandt", site)
    for case in cases:
        if "seg" in case.paths:
            case.notes.append("REMBRANDT has no reference masks: the seg file found was ignored")
            del case.paths["seg"]
    by_id = {c.subject_id: c for c in cases}
    for path in labels or []:
        apply_label_table(path, by_id, {"id": ("subject_id", "Sample", "Patient", "ID"), "grade": ("Grade",),
                                        "age": ("Age",), "sex": ("Gender", "Sex")})
    return cases


_UCSF_FOLDER = re.compile(r"^(UCSF-PDGM-(\d+))_nifti$")
_UCSF_FILES = {"t1": "T1", "t1ce": "T1c", "t2": "T2", "flair": "FLAIR", "seg": "tumor_segmentation"}
_UCSF_IDH = Vocabulary("idh", {"wildtype": 0, "mutant": 1, "mutated": 1, "idh1 p.r132h mutant": 1,
                               "idh1 mutant": 1, "idh2 mutant": 1})
_UCSF_CODEL = Vocabulary("codeletion", {"intact": 0, "co-deletion": 1, "codeleted": 1, "co-deleted": 1})
_UCSF_MGMT = Vocabulary("mgmt", {"negative": 0, "unmethylated": 0, "positive": 1, "methylated": 1})


def ucsf_id(value: object) -> str | None:
    """``UCSF-PDGM-004`` / ``UCSF-PDGM-0004`` -> ``UCSF-PDGM-0004`` (folders use 4 digits, the metadata 3)."""
    match = re.search(r"UCSF-PDGM-(\d+)", str(value))
    return f"UCSF-PDGM-{int(match.group(1)):04d}" if match else None


def curate_ucsf(root: str | Path, labels: list[str] | None = None, site: str | None = None) -> list[CuratedCase]:
    """UCSF-PDGM v5: ``UCSF-PDGM-NNNN_nifti/UCSF-PDGM-NNNN_{T1,T1c,T2,FLAIR,tumor_segmentation}.nii.gz`` and
    ``UCSF-PDGM-metadata_v5.csv`` (WHO CNS Grade, IDH, 1p/19q, MGMT status, Age at MRI, Sex, BraTS21 ID)."""
    cases = []
    for folder in sorted(p for p in Path(root).rglob("UCSF-PDGM-*_nifti") if p.is_dir()):
        match = _UCSF_FOLDER.match(folder.name)
        if match is None:
            continue
        patient = ucsf_id(match.group(1))
        case = CuratedCase(patient, "ucsf-pdgm", site or "ucsf-pdgm", source_id=folder.name, aliases={patient})
        for key, suffix in _UCSF_FILES.items():
            path = folder / f"{match.group(1)}_{suffix}.nii.gz"
            if path.is_file():
                case.paths[key] = str(path)
        check_files(case)
        cases.append(case)
    by_id = {c.subject_id: c for c in cases}

    def brats_alias(case: CuratedCase, row) -> None:
        from gliofed.data.sources.brats import normalise_brats21_id

        brats = next((c for c in row.index if c.lower().startswith("brats21 id")), None)
        alias = normalise_brats21_id(row[brats]) if brats and str(row[brats]).strip() else None
        if alias:
            case.aliases.add(alias)

    for path in labels or []:
        apply_label_table(path, by_id, {"id": ("ID",), "grade": ("WHO CNS Grade",), "idh": ("IDH",),
                                        "codeletion": ("1p/19q",), "mgmt": ("MGMT status",),
                                        "age": ("Age at MRI", "Age"), "sex": ("Sex",)},
                          key=ucsf_id, vocabularies={"idh": _UCSF_IDH, "codeletion": _UCSF_CODEL, "mgmt": _UCSF_MGMT},
                          extra=brats_alias)
    return cases


_EGD_FILES = {"t1": "T1", "t1ce": "T1GD", "t2": "T2", "flair": "FLAIR", "seg": "MASK"}
_EGD_IDH = Vocabulary("idh", {"wildtype": 0, "wild-type": 0, "0": 0, "mutated": 1, "mutant": 1, "1": 1})
_EGD_CODEL = Vocabulary("codeletion", {"intact": 0, "not co-deleted": 0, "0": 0, "co-deleted": 1, "codeleted": 1,
                                       "1": 1})


def _egd_metadata(root: Path, folder: Path) -> dict | None:
    own = folder / "metadata.json"
    if own.is_file():
        return json.loads(own.read_text())
    shared = next((p for p in (root / "metadata.json", root.parent / "metadata.json") if p.is_file()), None)
    if shared is None:
        return None
    return json.loads(shared.read_text()).get(folder.name)


def curate_egd(root: str | Path, labels: list[str] | None = None, site: str | None = None) -> list[CuratedCase]:
    """EGD: ``SUBJECTS/EGD-NNNN/{FLAIR,T1,T1GD,T2,MASK}.nii.gz`` plus ``metadata.json`` (per subject, or one file
    keyed by subject) with ``Genetic_and_Histological_labels.{IDH,1p19q,Grade}`` and ``Clinical_data.{Age,Sex}``;
    -1 is unknown. MASK is a binary whole-tumour mask, so the case is marked ``seg_regions = WT``.
    ``labels`` may add ``Genetic_and_Histological_labels.xlsx`` (its values override metadata.json)."""
    root = Path(root)
    subjects = next((p for p in [root / "SUBJECTS", root] if p.is_dir()), root)
    cases = []
    for folder in sorted(p for p in subjects.iterdir() if p.is_dir() and p.name.startswith("EGD-")):
        case = CuratedCase(folder.name, "egd", site or "egd", source_id=folder.name, seg_regions="WT")
        for key, stem in _EGD_FILES.items():
            path = folder / f"{stem}.nii.gz"
            if path.is_file():
                case.paths[key] = str(path)
        check_files(case)
        try:
            meta = _egd_metadata(subjects, folder)
        except json.JSONDecodeError as error:
            raise DataError(f"{folder}: metadata.json is not valid JSON ({error}).") from error
        if meta:
            genetic = meta.get("Genetic_and_Histological_labels", {})
            clinical = meta.get("Clinical_data", {})
            case.labels["idh"] = encode("idh", genetic.get("IDH"), case, _EGD_IDH)
            case.labels["codeletion"] = encode("codeletion", genetic.get("1p19q"), case, _EGD_CODEL)
            case.labels["grade"] = grade_code(genetic.get("Grade"), case)
            case.age = age_value(clinical.get("Age"))
            case.sex = sex_code(clinical.get("Sex"))
        else:
            case.notes.append("no metadata.json entry: labels unknown")
        cases.append(case)
    by_id = {c.subject_id: c for c in cases}
    for path in labels or []:
        apply_label_table(path, by_id, {"id": ("Subject", "ID"), "idh": ("IDH",), "codeletion": ("1p19q", "1p/19q"),
                                        "grade": ("Grade",)}, vocabularies={"idh": _EGD_IDH, "codeletion": _EGD_CODEL})
    return cases
