"""Dataset adapters (`gliofed curate`) on fixture trees that mimic each dataset's layout and label files."""

import pandas as pd
import pytest

from gliofed.cli import main
from gliofed.data.check import check_manifest
from gliofed.data.manifest import read_manifest
from gliofed.data.sources import curate, merge_manifests
from gliofed.errors import DataError
from tests.data import source_fixtures as fx


def status(result, source_id):
    row = result.report.set_index("source_id").loc[source_id]
    return row["status"], row["reason"], row["notes"]


def labels(result, subject):
    case = next(c for c in result.cases if c.subject_id == subject)
    return case.labels


def test_brats_tree_with_extra_files_missing_modality_and_unreadable_file(tmp_path):
    result = curate("brats", fx.make_brats(tmp_path / "brats"))
    assert len(result.cases) == 4  # extra files in a case folder are not cases
    assert status(result, "Brats18_CBICA_AAB_1")[0] == "included"
    assert status(result, "Brats18_TCIA01_131_1")[:2] == ("excluded", "missing modality t1ce")
    assert status(result, "Brats18_CBICA_ABB_1")[1].startswith("unreadable file: Brats18_CBICA_ABB_1_t2.nii.gz")
    manifest, report = result.write(tmp_path / "out" / "brats.csv")
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False).set_index("subject_id")
    assert list(rows.index) == ["Brats18_2013_2_1", "Brats18_CBICA_AAB_1"]
    assert rows.loc["Brats18_2013_2_1", "seg"] == ""  # validation-style case: no mask, still included
    assert rows.loc["Brats18_CBICA_AAB_1", "seg"].endswith("Brats18_CBICA_AAB_1_seg.nii.gz")
    assert len(pd.read_csv(report)) == 4
    assert check_manifest(manifest, progress=False).ok


def test_brats2021_joins_zero_padded_rsna_ids_and_the_tcia_mapping(tmp_path):
    root, label_files = fx.make_brats2021(tmp_path / "b21")
    result = curate("brats2021", root, label_files)
    assert labels(result, "BraTS2021_00002")["mgmt"] == 1 and labels(result, "BraTS2021_00005")["mgmt"] == 0
    assert labels(result, "BraTS2021_00109")["mgmt"] == -1
    assert "known to be problematic" in status(result, "BraTS2021_00109")[2]
    assert "MGMT value '7' not recognised" in status(result, "BraTS2021_01001")[2].replace("mgmt", "MGMT")
    cases = {c.subject_id: c for c in result.cases}
    assert cases["BraTS2021_00002"].aliases == {"TCGA-02-0006"}
    assert cases["BraTS2021_00005"].aliases == {"UCSF-PDGM-0004"}  # 3-digit metadata ID normalised


@pytest.mark.parametrize("version", ["1.0", "2.1"])
def test_upenn_baseline_sessions_mask_preference_and_vocabulary(tmp_path, version):
    root, clinical = fx.make_upenn(tmp_path / "upenn", version)
    result = curate("upenn-gbm", root, [clinical])
    assert status(result, "UPENN-GBM-00001_21")[:2] == ("excluded", "follow-up session _21 (only the pre-operative "
                                                       "baseline _11 is used)")
    assert status(result, "UPENN-GBM-00003_11")[:2] == ("excluded", "missing modality flair")
    cases = {c.source_id: c for c in result.cases}
    assert cases["UPENN-GBM-00001_11"].paths["seg"].endswith("images_segm/UPENN-GBM-00001_11_segm.nii.gz")
    assert "automated segmentation" in status(result, "UPENN-GBM-00002_11")[2]
    assert cases["UPENN-GBM-00001_11"].labels == {"idh": 0, "codeletion": -1, "mgmt": 1, "grade": 2}
    assert cases["UPENN-GBM-00002_11"].labels == {"idh": 1, "codeletion": -1, "mgmt": -1, "grade": 2}
    assert cases["UPENN-GBM-00001_11"].age == pytest.approx(61.2) and cases["UPENN-GBM-00002_11"].sex == "F"
    assert result.label_counts().loc["idh", "unknown"] == 0 and result.label_counts().loc["mask", "with"] == 2


def test_tcga_prefers_manual_masks_reads_ceccarelli_and_lists_the_seed_exclusions(tmp_path):
    root, table = fx.make_tcga(tmp_path / "tcga")
    result = curate("tcga", root, [table])
    report = result.report.set_index("subject_id")
    assert report.loc["TCGA-08-0509", "reason"] == ("missing modality t1 (also excluded by the seed study: "
                                                    "no pre-contrast T1)")
    assert report.loc["TCGA-08-0510", "status"] == "excluded"
    assert report.loc["TCGA-FG-7634", "reason"] == "missing modality t1ce (also excluded by the seed study: no T1ce)"
    cases = {c.subject_id: c for c in result.cases}
    assert cases["TCGA-02-0006"].paths["seg"].endswith("_GlistrBoost_ManuallyCorrected.nii.gz")
    assert cases["TCGA-CS-4941"].paths["seg"].endswith("_GlistrBoost.nii.gz")
    assert (cases["TCGA-02-0006"].dataset, cases["TCGA-CS-4941"].dataset) == ("tcga-gbm", "tcga-lgg")
    assert cases["TCGA-02-0006"].labels == {"idh": 0, "codeletion": 0, "mgmt": 0, "grade": 2}
    assert cases["TCGA-CS-4941"].labels == {"idh": 1, "codeletion": 1, "mgmt": 1, "grade": 1}
    assert cases["TCGA-02-0006"].sex == "F" and cases["TCGA-02-0006"].age == 56


def test_rembrandt_has_no_masks_and_only_grade(tmp_path):
    root, table = fx.make_rembrandt(tmp_path / "rembrandt")
    result = curate("rembrandt", root, [table])
    cases = {c.subject_id: c for c in result.cases}
    assert cases["HF0899"].labels["grade"] == 0 and cases["HF1139"].labels["grade"] == -1
    assert "seg" not in cases["HF1139"].paths and "no reference masks" in status(result, "HF1139")[2]
    assert cases["HF0899"].age is None  # an age range is not a number: unknown


def test_ucsf_normalises_three_digit_ids_and_maps_its_vocabulary(tmp_path):
    root, metadata = fx.make_ucsf(tmp_path / "ucsf")
    result = curate("ucsf-pdgm", root, [metadata])
    cases = {c.subject_id: c for c in result.cases}
    assert set(cases) == {"UCSF-PDGM-0004", "UCSF-PDGM-0011"}
    assert cases["UCSF-PDGM-0004"].labels == {"idh": 0, "codeletion": -1, "mgmt": 1, "grade": 2}
    assert cases["UCSF-PDGM-0011"].labels == {"idh": 1, "codeletion": 1, "mgmt": -1, "grade": 0}
    assert cases["UCSF-PDGM-0004"].paths["seg"].endswith("UCSF-PDGM-0004_tumor_segmentation.nii.gz")
    assert "BraTS2021_00005" in cases["UCSF-PDGM-0004"].aliases


def test_egd_marks_whole_tumour_masks_and_reports_odd_codes(tmp_path):
    result = curate("egd", fx.make_egd(tmp_path / "egd"))
    cases = {c.subject_id: c for c in result.cases}
    assert cases["EGD-0001"].labels == {"idh": 1, "codeletion": 1, "mgmt": -1, "grade": 0}
    assert cases["EGD-0002"].labels == {"idh": -1, "codeletion": -1, "mgmt": -1, "grade": 2}
    assert cases["EGD-0003"].labels["idh"] == -1
    assert "idh value 'borderline' not recognised" in status(result, "EGD-0003")[2]
    manifest, _ = result.write(tmp_path / "egd.csv")
    assert set(pd.read_csv(manifest, dtype=str)["seg_regions"]) == {"WT"}
    assert set(read_manifest(manifest)["seg_regions"]) == {"WT"}


def test_whole_tumour_only_masks_are_not_used_as_brats_masks(tmp_path):
    from gliofed.data.cache import WT_ONLY_NOTE, preprocess, read_index

    manifest, _ = curate("egd", fx.make_egd(tmp_path / "egd")).write(tmp_path / "egd.csv")
    report = preprocess(manifest, tmp_path / "cache", size=8, progress=False)
    assert not read_index(tmp_path / "cache")["has_mask"].any()
    assert (report.cases["reason"] == WT_ONLY_NOTE).all() and "note EGD-0001" in str(report)


def test_merge_removes_cross_dataset_duplicates_and_lists_them(tmp_path):
    b21, b21_labels = fx.make_brats2021(tmp_path / "b21")
    tcga, table = fx.make_tcga(tmp_path / "tcga")
    ucsf, metadata = fx.make_ucsf(tmp_path / "ucsf")
    files = [curate("brats2021", b21, b21_labels).write(tmp_path / "m" / "b21.csv")[0],
             curate("tcga", tcga, [table]).write(tmp_path / "m" / "tcga.csv")[0],
             curate("ucsf-pdgm", ucsf, [metadata]).write(tmp_path / "m" / "ucsf.csv")[0]]
    merged, duplicates = merge_manifests(files, tmp_path / "all" / "all.csv")
    assert dict(zip(duplicates["subject_id"], duplicates["duplicate_of"])) == {"BraTS2021_00002": "TCGA-02-0006",
                                                                             "BraTS2021_00005": "UCSF-PDGM-0004"}
    assert {"BraTS2021_00109", "BraTS2021_01001", "TCGA-02-0006", "UCSF-PDGM-0004"} <= set(merged["subject_id"])
    assert set(merged["site"]) == {"brats2021", "tcga-gbm", "tcga-lgg", "ucsf-pdgm"}
    back = read_manifest(tmp_path / "all" / "all.csv")  # paths re-anchored to the merged file
    assert all(pd.io.common.file_exists(p) for p in back["t1"])
    assert (tmp_path / "all" / "all.duplicates.csv").is_file()


def test_cli_curate_and_merge(tmp_path, capsys):
    root = fx.make_brats(tmp_path / "brats")
    assert main(["curate", "--source", "brats", "--root", str(root), "--out", str(tmp_path / "a.csv")]) == 0
    out = capsys.readouterr().out
    assert "4 case(s) found, 2 included, 2 excluded" in out
    assert "excluded Brats18_TCIA01_131_1: missing modality t1ce" in out
    assert main(["curate", "--merge", str(tmp_path / "a.csv"), "--out", str(tmp_path / "all.csv")]) == 0
    assert main(["curate", "--source", "egd", "--root", str(tmp_path / "nowhere"), "--out", "x.csv"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_no_cases_or_unreadable_label_file_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tcga cases found"):
        curate("tcga", tmp_path / "empty")
    root = fx.make_brats(tmp_path / "brats")
    with pytest.raises(DataError, match="label file not found"):
        curate("brats2021", root, [tmp_path / "missing.csv"])
