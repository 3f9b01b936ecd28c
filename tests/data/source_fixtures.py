"""Fixture trees that mimic each public dataset's layout and label files, with tiny NIfTI files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SHAPE = (6, 7, 5)


def nifti(path: Path, seg: bool = False, binary: bool = False, seed: int = 0, labels=(1, 2, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if seg:
        data = np.zeros(SHAPE, np.uint8)
        data[2:4, 2:5, 1:3] = 1 if binary else rng.choice(list(labels), size=(2, 3, 2))
        if not binary:
            data[3, 2:2 + len(labels), 1] = labels  # every label present, whatever the draw
    else:
        data = (rng.random(SHAPE) * 100 + 1).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a nifti file")
    return path


def brats_case(folder: Path, case: str, modalities=("flair", "t1", "t1ce", "t2"), seg=True, extra=(),
               labels=(1, 2, 4)) -> None:
    for m in modalities:
        nifti(folder / case / f"{case}_{m}.nii.gz")
    if seg:
        nifti(folder / case / f"{case}_seg.nii.gz", seg=True, labels=labels)
    for name in extra:
        nifti(folder / case / name, seg=True)


def brats2023_case(folder: Path, case: str, modalities=("t1n", "t1c", "t2w", "t2f"), seg=True,
                   labels=(1, 2, 3), extra=()) -> None:
    """A case in the BraTS 2023+ naming: ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``."""
    for m in modalities:
        nifti(folder / case / f"{case}-{m}.nii.gz")
    if seg:
        nifti(folder / case / f"{case}-seg.nii.gz", seg=True, labels=labels)
    for name in extra:
        nifti(folder / case / name, seg=True)


def make_brats2023(root: Path, post_treatment: bool = False) -> Path:
    """BraTS-GLI 2023 naming and labels (ET = 3): a full case with an extra file, one without T2w, one without seg;
    ``post_treatment`` adds a BraTS 2024 case whose mask holds 4 (resection cavity)."""
    brats2023_case(root, "BraTS-GLI-00000-000", extra=["BraTS-GLI-00000-000-pred.nii.gz"])
    brats2023_case(root, "BraTS-GLI-00001-000", modalities=("t1n", "t1c", "t2f"))
    brats2023_case(root, "BraTS-GLI-00002-000", seg=False)
    if post_treatment:
        brats2023_case(root, "BraTS-GLI-00003-100", labels=(1, 2, 3, 4))
    return root


def make_fets(root: Path) -> tuple[Path, Path]:
    """A FeTS 2021-style release (BraTS 2017-2021 naming) and its partitioning_1.csv: two partitions, one case the
    file does not list, one listed subject that is not in the release."""
    for number in range(1, 6):
        brats_case(root, f"FeTS21_Training_{number:03d}")
    partition = root / "partitioning_1.csv"
    pd.DataFrame({"Partition_ID": ["1", "1", "02", "02", "3"],
                  "Subject_ID": ["FeTS21_Training_001", "FeTS21_Training_002", "FeTS21_Training_003",
                                 "FeTS21_Training_004", "FeTS21_Training_099"]}).to_csv(partition, index=False)
    return root, partition


#: MSD Task01's dataset.json contrasts (4th axis of every image, in this order) and labels
MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def make_msd(root: Path, labels=None) -> Path:
    """MSD Task01_BrainTumour: dataset.json, 4-D images whose channel k is filled with 10 * (k + 1) plus noise (so
    the split can be checked), labels 1 oedema / 2 non-enhancing / 3 enhancing, a test image, a macOS ``._`` file."""
    rng = np.random.default_rng(3)
    training = []
    for name in ("BRATS_001", "BRATS_002"):
        image = np.stack([10.0 * (k + 1) + rng.random(SHAPE) for k in range(4)], axis=-1).astype(np.float32)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{name}.nii.gz")
        mask = np.zeros(SHAPE, np.uint8)
        mask[1:4, 1:4, 1:3] = 1
        mask[2, 2, 1] = 2
        mask[2, 3, 1] = 3
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(mask, np.eye(4)), root / "labelsTr" / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "imagesTs").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(rng.random((*SHAPE, 4)).astype(np.float32) + 1, np.eye(4)),
             root / "imagesTs" / "BRATS_557.nii.gz")
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    description = {"name": "BRATS", "modality": MSD_MODALITY, "labels": labels or MSD_LABELS,
                   "numTraining": 2, "numTest": 1, "training": training, "test": ["./imagesTs/BRATS_557.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def brats_release(root: Path, naming: str, subjects: list[str], shape=(17, 15, 11), seed: int = 0) -> Path:
    """A small release for end-to-end runs: per case an ellipsoid 'brain' (non-zero) in a zero background and a
    tumour (oedema around an enhancing rim around a necrotic centre), brighter in FLAIR and T1ce; masks in the
    release's own labels (``brats``: ET 4; ``brats2023``: ET 3, file names -t1n/-t1c/-t2w/-t2f)."""
    rng = np.random.default_rng(seed)
    suffixes = {"brats": ("_", ("t1", "t1ce", "t2", "flair")), "brats2023": ("-", ("t1n", "t1c", "t2w", "t2f"))}
    separator, names = suffixes[naming]
    et = 4 if naming == "brats" else 3
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    brain = sum(((grid[i] - centre[i]) / (0.45 * shape[i])) ** 2 for i in range(3)) <= 1.0
    for subject in subjects:
        spot = centre + rng.uniform(-2, 2, 3)
        distance = np.sqrt(sum((grid[i] - spot[i]) ** 2 for i in range(3)))
        mask = np.zeros(shape, np.uint8)
        mask[(distance <= 3.5) & brain] = 2
        mask[(distance <= 2.2) & brain] = et
        mask[(distance <= 1.0) & brain] = 1
        folder = root / subject
        folder.mkdir(parents=True, exist_ok=True)
        for k, name in enumerate(names):
            data = np.where(brain, 100 + 20 * k + rng.normal(0, 5, shape), 0)
            data = np.where(mask > 0, data + (80 if name in ("flair", "t2f") else 30), data)
            if name in ("t1ce", "t1c"):
                data = np.where(mask == et, data + 120, data)
            nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([1.0, 1.0, 1.0, 1.0])),
                     folder / f"{subject}{separator}{name}.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.eye(4)), folder / f"{subject}{separator}seg.nii.gz")
    return root


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
