"""TCGA-GBM / TCGA-LGG pre-operative scans with segmentations (Bakas et al. 2017) and the Ceccarelli et al.
(Cell 2016) molecular table."""

from __future__ import annotations

import re
from pathlib import Path

from gliofed.data.sources.common import (
    CuratedCase,
    apply_label_table,
    check_files,
)

__all__ = ["curate_tcga", "SEED_EXCLUSIONS"]

#: the seed study's three TCGA exclusions and why
SEED_EXCLUSIONS = {"TCGA-08-0509": "no pre-contrast T1", "TCGA-08-0510": "no pre-contrast T1",
                   "TCGA-FG-7634": "no T1ce"}
_FILE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})_([0-9.]+)_"
                   r"(flair|t1|t1Gd|t2|GlistrBoost|GlistrBoost_ManuallyCorrected)\.nii(\.gz)?$")
_KEYS = {"flair": "flair", "t1": "t1", "t1Gd": "t1ce", "t2": "t2"}


def _collection(path: Path) -> str:
    text = str(path).upper()
    return "tcga-lgg" if "LGG" in text else "tcga-gbm" if "GBM" in text else "tcga"


def curate_tcga(root: str | Path, labels: list[str] | None = None, site: str | None = None) -> list[CuratedCase]:
    """Every ``TCGA-XX-XXXX`` folder under ``root`` (GBM and LGG packages, testing folders included).

    The ManuallyCorrected segmentation is preferred over GlistrBoost. A patient scanned on two dates keeps
    the earliest scan; the other is listed as excluded. Labels come from the Ceccarelli table (header on its
    second row): grade G2/G3/G4, IDH Mutant/WT, 1p/19q codel/non-codel, MGMT Methylated/Unmethylated; "NA"
    is unknown.
    """
    scans: dict[tuple[str, str], CuratedCase] = {}
    for path in sorted(Path(root).rglob("TCGA-*.nii*")):
        match = _FILE.match(path.name)
        if match is None:
            continue
        patient, date, kind = match.group(1), match.group(2), match.group(3)
        dataset = _collection(path.parent)
        case = scans.setdefault((patient, date), CuratedCase(patient, dataset, site or dataset,
                                                             source_id=f"{patient}_{date}", aliases={patient}))
        if kind in _KEYS:
            case.paths[_KEYS[kind]] = str(path)
        elif kind == "GlistrBoost_ManuallyCorrected" or "seg" not in case.paths:
            case.paths["seg"] = str(path)
    cases, seen = [], set()
    for (patient, _date), case in sorted(scans.items()):
        if case.paths.get("seg", "").endswith(("_GlistrBoost.nii.gz", "_GlistrBoost.nii")):
            case.notes.append("GlistrBoost segmentation (no manually corrected one)")
        if patient in seen:
            case.exclude("a second pre-operative scan of the same patient (the earliest is used)")
        else:
            check_files(case)
            if patient in SEED_EXCLUSIONS and case.status == "excluded":
                case.reason += f" (also excluded by the seed study: {SEED_EXCLUSIONS[patient]})"
            elif patient in SEED_EXCLUSIONS:
                case.notes.append(f"the seed study excluded this patient ({SEED_EXCLUSIONS[patient]})")
        seen.add(patient)
        cases.append(case)
    by_patient = {}
    for case in cases:
        by_patient.setdefault(case.subject_id, case)
    for path in labels or []:
        apply_label_table(path, by_patient, {"id": ("Case",), "grade": ("Grade",), "idh": ("IDH status",),
                                             "codeletion": ("1p/19q codeletion", "1p/19q"),
                                             "mgmt": ("MGMT promoter status", "MGMT"), "age": ("Age",),
                                             "sex": ("Gender", "Sex")})
    return cases
