"""Fixture trees that mimic each public dataset's layout and label files, with tiny NIfTI files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SHAPE = (6, 7, 5)


def nifti(path: Path, seg: bool = False, binary: bool = False, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if seg:
        data = np.zeros(SHAPE, np.uint8)
        data[2:4, 2:5, 1:3] = 1 if binary else rng.choice([1, 2, 4], size=(2, 3, 2))
    else:
        data = (rng.random(SHAPE) * 100 + 1).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a nifti file")
    return path


def brats_case(folder: Path, case: str, modalities=("flair", "t1", "t1ce", "t2"), seg=True, extra=()) -> None:
    for m in modalities:
        nifti(folder / case / f"{case}_{m}.nii.gz")
    if seg:
        nifti(folder / case / f"{case}_seg.nii.gz", seg=True)
    for name in extra:
        nifti(folder / case / name, seg=True)


def make_brats(root: Path) -> Path:
    """BraTS 2018 naming: a full case with extra files, one without T1ce, one without seg, one unreadable."""
    brats_case(root, "Brats18_CBICA_AAB_1", extra=["Brats18_CBICA_AAB_1_pred.nii.gz", "notes_mask.nii.gz"])
    brats_case(root, "Brats18_TCIA01_131_1", modalities=("flair", "t1", "t2"))
    brats_case(root, "Brats18_2013_2_1", seg=False)
    brats_case(root, "Brats18_CBICA_ABB_1")
    garbage(root / "Brats18_CBICA_ABB_1" / "Brats18_CBICA_ABB_1_t2.nii.gz")
    return root


def make_brats2021(root: Path) -> tuple[Path, list[Path]]:
    """TCIA package layout (one level deeper), RSNA labels with integer IDs, and the TCIA mapping workbook."""
    base = root / "BraTS2021_TrainingSet"
    brats_case(base / "TCGA-GBM", "BraTS2021_00002")
    brats_case(base / "UCSF-PDGM", "BraTS2021_00005")
    brats_case(base / "UPENN-GBM", "BraTS2021_00109")
    brats_case(base / "ACRIN-FMISO-Brain", "BraTS2021_01001")
    rsna = root / "train_labels.csv"
    pd.DataFrame({"BraTS21ID": [2, 5, 109, 1001], "MGMT_value": [1, 0, 1, 7]}).to_csv(rsna, index=False)
    mapping = root / "BraTS2021_MappingToTCIA.xlsx"
    pd.DataFrame({
        "BraTS2021 ID": ["BraTS2021_00002", "BraTS2021_00005", "BraTS2021_00109", "BraTS2021_01001"],
        "Data Collection (as on TCIA+additional)": ["TCGA-GBM", "UCSF-PDGM", "UPENN-GBM", "ACRIN-FMISO-Brain"],
        "Segmentation (Task 1) Cohort": ["Training"] * 4,
        "Source subject": ["TCGA-02-0006", "UCSF-PDGM-004", "UPENN-GBM-00099", "ACRIN-FMISO-Brain-001"],
    }).to_excel(mapping, index=False)
    return root, [rsna, mapping]


def make_upenn(root: Path, version: str = "2.1") -> tuple[Path, Path]:
    s = root / "images_structural"
    for session in ("UPENN-GBM-00001_11", "UPENN-GBM-00001_21", "UPENN-GBM-00002_11", "UPENN-GBM-00003_11"):
        for suffix in ("T1", "T1GD", "T2", "FLAIR"):
            if session == "UPENN-GBM-00003_11" and suffix == "FLAIR":
                continue
            nifti(s / session / f"{session}_{suffix}.nii.gz")
    nifti(root / "images_segm" / "UPENN-GBM-00001_11_segm.nii.gz", seg=True)
    nifti(root / "automated_segm" / "UPENN-GBM-00001_11_automated_approx_segm.nii.gz", seg=True)
    nifti(root / "automated_segm" / "UPENN-GBM-00002_11_automated_approx_segm.nii.gz", seg=True)
    survival = "Survival_from_surgery_days_UPDATED" if version == "2.1" else "Survival_from_surgery_days"
    clinical = root / f"UPENN-GBM_clinical_info_v{version}.csv"
    pd.DataFrame({"ID": ["UPENN-GBM-00001_11", "UPENN-GBM-00001_21", "UPENN-GBM-00002_11", "UPENN-GBM-00003_11"],
                  "Gender": ["M", "M", "F", "F"], "Age_at_scan_years": ["61.2", "61.9", "55", "70"],
                  survival: ["400", "400", "Not Available", "100"],
                  "IDH1": ["Wildtype", "Wildtype", "Mutated", "NOS/NEC"],
                  "MGMT": ["Methylated", "Methylated", "Indeterminate", "Not Available"]}).to_csv(clinical, index=False)
    return root, clinical


def make_tcga(root: Path) -> tuple[Path, Path]:
    gbm = root / "Pre-operative_TCGA_GBM_NIfTI_and_Segmentations"
    lgg = root / "Pre-operative_TCGA_LGG_NIfTI_and_Segmentations"
    for patient, date, kinds, folder in [
        ("TCGA-02-0006", "1996.08.23",
         ("flair", "t1", "t1Gd", "t2", "GlistrBoost", "GlistrBoost_ManuallyCorrected"), gbm),
        ("TCGA-08-0509", "1998.01.01", ("flair", "t1Gd", "t2", "GlistrBoost"), gbm),
        ("TCGA-08-0510", "1998.02.02", ("flair", "t1Gd", "t2", "GlistrBoost"), gbm),
        ("TCGA-FG-7634", "2001.03.03", ("flair", "t1", "t2", "GlistrBoost"), lgg),
        ("TCGA-CS-4941", "1997.06.22", ("flair", "t1", "t1Gd", "t2", "GlistrBoost"), lgg),
    ]:
        for kind in kinds:
            nifti(folder / patient / f"{patient}_{date}_{kind}.nii.gz", seg="Glistr" in kind)
    table = root / "TableS1.PatientData.20151020.v3.xlsx"
    rows = [["Table S1. Patient data", "", "", "", "", "", "", ""],
            ["Case", "Study", "Grade", "Age (years at diagnosis)", "Gender", "IDH status", "1p/19q codeletion",
             "MGMT promoter status"],
            ["TCGA-02-0006", "Glioblastoma multiforme", "G4", "56", "female", "WT", "non-codel", "Unmethylated"],
            ["TCGA-CS-4941", "Brain Lower Grade Glioma", "G3", "67", "male", "Mutant", "codel", "Methylated"],
            ["TCGA-FG-7634", "Brain Lower Grade Glioma", "G2", "NA", "NA", "Mutant", "NA", "NA"]]
    pd.DataFrame(rows).to_excel(table, index=False, header=False)
    return root, table


def make_rembrandt(root: Path) -> tuple[Path, Path]:
    brats_case(root, "HF0899", seg=False)
    brats_case(root, "HF1139", seg=True)
    table = root / "rembrandt_clinical.csv"
    pd.DataFrame({"Sample": ["HF0899", "HF1139"], "Grade": ["II", "--"], "Disease": ["ASTROCYTOMA", "GBM"],
                  "Age": ["40-44", "55"], "Gender": ["F", "M"]}).to_csv(table, index=False)
    return root, table


def make_ucsf(root: Path) -> tuple[Path, Path]:
    base = root / "UCSF-PDGM-v5"
    for patient in ("UCSF-PDGM-0004", "UCSF-PDGM-0011"):
        for suffix in ("T1", "T1c", "T2", "FLAIR", "tumor_segmentation", "brain_segmentation", "DTI_eddy_FA"):
            nifti(base / f"{patient}_nifti" / f"{patient}_{suffix}.nii.gz", seg="segmentation" in suffix)
    metadata = root / "UCSF-PDGM-metadata_v5.csv"
    pd.DataFrame({"ID": ["UCSF-PDGM-004", "UCSF-PDGM-011"], "Sex": ["M", "F"], "Age at MRI": ["66", "35"],
                  "WHO CNS Grade": ["4", "2"], "Final pathologic diagnosis (WHO 2021)": ["GBM", "Oligodendroglioma"],
                  "MGMT status": ["positive", "indeterminate"], "1p/19q": ["", "co-deletion"],
                  "IDH": ["wildtype", "mutant"], "BraTS21 ID": ["BraTS2021_00005", ""]}).to_csv(metadata, index=False)
    return root, metadata


def make_egd(root: Path) -> Path:
    subjects = root / "SUBJECTS"
    for subject, meta in [
        ("EGD-0001", {"IDH": "mutated", "1p19q": "co-deleted", "Grade": 2, "Age": 44, "Sex": "F"}),
        ("EGD-0002", {"IDH": -1, "1p19q": -1, "Grade": 4, "Age": 70, "Sex": "M"}),
        ("EGD-0003", {"IDH": "borderline", "1p19q": "intact", "Grade": -1, "Age": -1, "Sex": -1}),
    ]:
        for stem in ("FLAIR", "T1", "T1GD", "T2"):
            nifti(subjects / subject / f"{stem}.nii.gz")
        nifti(subjects / subject / "MASK.nii.gz", seg=True, binary=True)
        payload = {"Genetic_and_Histological_labels": {k: meta[k] for k in ("IDH", "1p19q", "Grade")},
                   "Clinical_data": {"Age": meta["Age"], "Sex": meta["Sex"]}}
        (subjects / subject / "metadata.json").write_text(json.dumps(payload))
    return root
