"""UPENN-GBM (TCIA): baseline ``_11`` sessions, manual masks preferred over automated ones, clinical CSV v1.0/v2.1."""

from __future__ import annotations

import re
from pathlib import Path

from gliofed.data.sources.common import (
    CuratedCase,
    apply_label_table,
    check_files,
)

__all__ = ["curate_upenn"]

_CONTRASTS = {"t1": "T1", "t1ce": "T1GD", "t2": "T2", "flair": "FLAIR"}
_SESSION = re.compile(r"^(UPENN-GBM-\d{5})_(\d{2})$")


def curate_upenn(root: str | Path, labels: list[str] | None = None, site: str | None = None) -> list[CuratedCase]:
    """Cases from ``images_structural/`` with masks from ``images_segm/`` (manual) or ``automated_segm/``.

    Follow-up sessions (``_21`` ...) are listed as excluded. Labels come from the clinical info CSV: IDH1
    (Wildtype / Mutated / NOS), MGMT (Methylated / Unmethylated / Indeterminate / n/a), age, sex; the cohort
    is glioblastoma, so grade is IV for every case.
    """
    root = Path(root)
    structural = next((p for p in [root / "images_structural", *root.rglob("images_structural")] if p.is_dir()), None)
    cases = []
    if structural is None:
        return cases
    base = structural.parent
    for folder in sorted(p for p in structural.iterdir() if p.is_dir()):
        match = _SESSION.match(folder.name)
        patient = match.group(1) if match else folder.name
        case = CuratedCase(patient, "upenn-gbm", site or "upenn-gbm", source_id=folder.name, aliases={patient})
        case.labels["grade"] = 2
        for key, suffix in _CONTRASTS.items():
            path = folder / f"{folder.name}_{suffix}.nii.gz"
            if path.is_file():
                case.paths[key] = str(path)
        manual = base / "images_segm" / f"{folder.name}_segm.nii.gz"
        automated = base / "automated_segm" / f"{folder.name}_automated_approx_segm.nii.gz"
        if manual.is_file():
            case.paths["seg"] = str(manual)
        elif automated.is_file():
            case.paths["seg"] = str(automated)
            case.notes.append("automated segmentation (no manual one)")
        if match is None:
            case.exclude(f"folder name {folder.name} is not UPENN-GBM-NNNNN_SS")
        elif match.group(2) != "11":
            case.exclude(f"follow-up session _{match.group(2)} (only the pre-operative baseline _11 is used)")
        else:
            check_files(case)
        cases.append(case)
    by_session = {c.source_id: c for c in cases}
    baseline = {**{c.subject_id: c for c in cases if c.source_id.endswith("_11")}, **by_session}
    for path in labels or []:
        apply_label_table(path, baseline, {"id": ("ID",), "idh": ("IDH1", "IDH"), "mgmt": ("MGMT",),
                                           "age": ("Age_at_scan_years", "Age"), "sex": ("Gender", "Sex")})
    return cases
