"""Label conventions: BraTS 2017-2021 (ET 4), BraTS 2023+ (ET 3, new file names), BraTS 2024 post-treatment
(4 = resection cavity) and MSD Task01 (4-D images, its own label order), detected per dataset by `curate`, accepted
by `check` and the preprocessing where the convention says so."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from gliofed.data.cache import preprocess, read_index
from gliofed.data.check import check_manifest
from gliofed.data.conventions import CONVENTIONS, convention, convention_of_files
from gliofed.data.manifest import read_manifest
from gliofed.data.sources import curate
from gliofed.errors import DataError
from tests.data import source_fixtures as fx


def _manifest(result, out):
    path, _ = result.write(out)
    return path, pd.read_csv(path, dtype=str, keep_default_na=False).set_index("subject_id")


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_every_convention_round_trips_its_tumour_labels(name):
    rules = CONVENTIONS[name]
    tumour = [v for v in sorted(rules.values) if rules.to_class[v] or v == 0]
    assert rules.encode(rules.decode(np.array(tumour))).tolist() == tumour


def test_resection_cavity_is_background_and_unknown_labels_are_refused():
    assert CONVENTIONS["brats2024"].decode(np.array([3, 4])).tolist() == [3, 0]
    with pytest.raises(DataError, match=r"x.nii.gz: segmentation values 3 are not labels of the brats convention"):
        convention("brats").decode(np.array([0, 3]), where="x.nii.gz")


def test_file_names_imply_a_convention():
    assert convention_of_files(["a/BraTS-GLI-00000-000-t2f.nii.gz", "b/x-t1n.nii"]) == "brats2023"
    assert convention_of_files(["Brats18_CBICA_AAB_1_t1ce.nii.gz"]) == "brats"


def test_brats2023_names_are_read_and_their_enhancing_label_three_detected(tmp_path):
    result = curate("brats", fx.make_brats2023(tmp_path / "gli"), progress=False)
    report = result.report.set_index("source_id")
    assert report.loc["BraTS-GLI-00001-000", "reason"] == "missing modality t2"
    path, rows = _manifest(result, tmp_path / "gli.csv")
    assert list(rows.index) == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]  # the -pred file is not a case
    assert rows.loc["BraTS-GLI-00000-000", "t1ce"].endswith("BraTS-GLI-00000-000-t1c.nii.gz")
    assert rows.loc["BraTS-GLI-00000-000", "flair"].endswith("-t2f.nii.gz")
    assert set(rows["label_convention"]) == {"brats2023"} and set(rows["dataset"]) == {"brats-gli"}
    assert "label convention brats2023" in str(result) and "3 (1 case(s))" in str(result)
    assert check_manifest(path, progress=False).ok  # label 3 accepted where the convention says so


def test_a_mask_with_label_four_makes_the_dataset_brats2024_post_treatment(tmp_path):
    result = curate("brats", fx.make_brats2023(tmp_path / "gli", post_treatment=True), progress=False)
    path, rows = _manifest(result, tmp_path / "gli.csv")
    assert set(rows["label_convention"]) == {"brats2024"}
    assert "BraTS-GLI-00003-100" in rows.index and check_manifest(path, progress=False).ok
    cache = tmp_path / "cache"
    preprocess(path, cache, size=8, progress=False)
    seg = np.load(cache / "cases" / "BraTS-GLI-00003-100.seg.npy")
    assert set(np.unique(seg)) <= {0, 1, 2, 3}  # the resection cavity is not tumour


def test_a_forced_brats2023_convention_excludes_a_mask_with_label_four(tmp_path):
    result = curate("brats", fx.make_brats2023(tmp_path / "gli", post_treatment=True), label_convention="brats2023",
                    progress=False)
    reason = result.report.set_index("source_id").loc["BraTS-GLI-00003-100", "reason"]
    assert reason.startswith("segmentation values 4 outside {0, 1, 2, 3} (label convention brats2023")


def test_old_names_keep_brats_labels_and_exclude_a_mask_with_label_three(tmp_path):
    root = tmp_path / "b18"
    fx.brats_case(root, "Brats18_CBICA_AAA_1")
    fx.brats_case(root, "Brats18_CBICA_AAB_1", labels=(1, 2, 3, 4))
    result = curate("brats", root, progress=False)
    path, rows = _manifest(result, tmp_path / "b18.csv")
    assert list(rows.index) == ["Brats18_CBICA_AAA_1"] and rows.loc["Brats18_CBICA_AAA_1", "label_convention"] == ""
    reason = result.report.set_index("source_id").loc["Brats18_CBICA_AAB_1", "reason"]
    assert reason.startswith("segmentation values 3 outside {0, 1, 2, 4} (label convention brats")
    assert read_manifest(path)["label_convention"].tolist() == ["brats"]


def test_old_names_with_enhancing_label_three_everywhere_read_as_brats2023(tmp_path):
    root = tmp_path / "renamed"
    fx.brats_case(root, "case_a", labels=(1, 2, 3))
    fx.brats_case(root, "case_b", labels=(2, 3))
    _, rows = _manifest(curate("brats", root, progress=False), tmp_path / "r.csv")
    assert set(rows["label_convention"]) == {"brats2023"} and len(rows) == 2


def test_two_namings_under_one_root_are_refused(tmp_path):
    fx.make_brats2023(tmp_path / "mixed")
    fx.brats_case(tmp_path / "mixed", "Brats18_CBICA_AAB_1")
    with pytest.raises(DataError, match="curate each release into its own manifest"):
        curate("brats", tmp_path / "mixed", progress=False)


def test_preprocessing_accepts_label_three_only_where_the_convention_says_so(tmp_path):
    result = curate("brats", fx.make_brats2023(tmp_path / "gli"), progress=False)
    path, _ = _manifest(result, tmp_path / "gli.csv")
    preprocess(path, tmp_path / "cache", size=8, progress=False)
    assert read_index(tmp_path / "cache").set_index("subject_id").loc["BraTS-GLI-00000-000", "has_mask"]
    seg = np.load(tmp_path / "cache" / "cases" / "BraTS-GLI-00000-000.seg.npy")
    assert 3 in np.unique(seg)  # ET 3 stays class 3
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw["label_convention"] = ""  # claim BraTS 2017-2021 labels: label 3 is now refused
    raw.to_csv(path, index=False)
    report = preprocess(path, tmp_path / "cache2", size=8, progress=False)
    skipped = report.skipped.set_index("subject_id")
    assert skipped.loc["BraTS-GLI-00000-000", "reason"].startswith("seg: segmentation values 3 outside {0, 1, 2, 4}")


def test_msd_four_dimensional_images_are_split_in_dataset_json_order(tmp_path):
    root = fx.make_msd(tmp_path / "Task01_BrainTumour")
    result = curate("msd", root, progress=False)
    assert len(result.cases) == 3  # two training cases, one test case; the ._ file is not a case
    path, rows = _manifest(result, tmp_path / "out" / "msd.csv")
    assert set(rows["label_convention"]) == {"msd"} and rows.loc["BRATS_557", "seg"] == ""
    manifest = read_manifest(path).set_index("subject_id")
    for k, contrast in enumerate(("flair", "t1", "t1ce", "t2")):  # FLAIR, T1w, t1gd, T2w
        volume = np.asarray(nib.load(manifest.loc["BRATS_001", contrast]).dataobj)
        assert volume.shape == fx.SHAPE and 10 * (k + 1) <= volume.min() < volume.max() < 10 * (k + 2)
    assert check_manifest(path, progress=False).ok


def test_msd_labels_become_gliofed_classes(tmp_path):
    root = fx.make_msd(tmp_path / "Task01_BrainTumour")
    path, _ = _manifest(curate("msd", root, progress=False), tmp_path / "msd.csv")
    preprocess(path, tmp_path / "cache", size=8, progress=False)
    seg = np.load(tmp_path / "cache" / "cases" / "BRATS_001.seg.npy")
    counts = {k: int((seg == k).sum()) for k in (1, 2, 3)}
    # MSD 1 oedema (the most voxels) -> class 2, 2 non-enhancing -> class 1, 3 enhancing -> class 3
    assert counts[2] > counts[1] >= 1 and counts[3] >= 1


def test_msd_label_order_is_verified(tmp_path):
    labels = {"0": "background", "1": "non-enhancing tumor", "2": "edema", "3": "enhancing tumour"}
    root = fx.make_msd(tmp_path / "Task01_BrainTumour", labels=labels)
    with pytest.raises(DataError, match="differ from Task01's"):
        curate("msd", root, progress=False)


def test_msd_needs_its_dataset_json(tmp_path):
    root = fx.make_msd(tmp_path / "Task01_BrainTumour")
    description = json.loads((root / "dataset.json").read_text())
    description["modality"] = {"0": "FLAIR", "1": "T1w", "2": "T2w"}
    (root / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(DataError, match="its modality table lacks t1ce"):
        curate("msd", root, progress=False)
