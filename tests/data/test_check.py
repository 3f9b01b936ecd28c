"""One test per bad input `gliofed check` must report, each asserting its message."""

import gzip
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from gliofed.data.check import check_manifest


def _edit(manifest, column, row, value):
    raw = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    raw.loc[row, column] = value
    raw.to_csv(manifest, index=False)


def _messages(manifest):
    report = check_manifest(manifest, progress=False)
    return [str(p) for p in report.problems]


def test_clean_manifest_has_no_problems_and_a_summary(small_manifest):
    report = check_manifest(small_manifest, progress=False)
    assert report.ok
    assert "2 subjects, no problems" in str(report)
    assert report.summary.loc["a", "subjects"] == 1


def test_missing_file(small_manifest):
    (small_manifest.parent / "s1" / "s1_t2.nii.gz").unlink()
    assert _messages(small_manifest) == ["s1: s1_t2.nii.gz: file not found"]


def test_unreadable_file(small_manifest):
    (small_manifest.parent / "s1" / "s1_t1.nii.gz").write_bytes(gzip.compress(b"not a nifti at all"))
    [message] = _messages(small_manifest)
    assert message.startswith("s1: s1_t1.nii.gz: unreadable NIfTI file")


def test_truncated_gzip(small_manifest):
    path = small_manifest.parent / "s2" / "s2_flair.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _messages(small_manifest) == ["s2: s2_flair.nii.gz: truncated or corrupt gzip file"]


def test_shape_mismatch(small_manifest):
    path = small_manifest.parent / "s1" / "s1_t2.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(7 * 8 * 10, dtype=np.int16).reshape(7, 8, 10), np.eye(4)), path)
    assert _messages(small_manifest) == ["s1: s1_t2.nii.gz: shape (7, 8, 10) differs from t1 shape (7, 8, 9)"]


def test_affine_mismatch(small_manifest):
    path = small_manifest.parent / "s1" / "s1_flair.nii.gz"
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.ones((7, 8, 9), np.int16) * np.arange(9, dtype=np.int16), affine), path)
    assert _messages(small_manifest) == ["s1: s1_flair.nii.gz: affine differs from t1 affine (not co-registered)"]


def test_nan_voxels(small_manifest):
    data = np.ones((7, 8, 9), np.float32)
    data[0, 0, :3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), small_manifest.parent / "s2" / "s2_t1ce.nii.gz")
    assert _messages(small_manifest) == ["s2: s2_t1ce.nii.gz: 3 NaN/Inf voxels"]


def test_empty_modality(small_manifest):
    nib.save(nib.Nifti1Image(np.zeros((7, 8, 9), np.int16), np.eye(4)), small_manifest.parent / "s2" / "s2_t2.nii.gz")
    assert _messages(small_manifest) == ["s2: s2_t2.nii.gz: empty modality (every voxel is 0)"]


def _write_seg(manifest, subject, values):
    seg = np.zeros((7, 8, 9), np.uint8)
    for k, value in enumerate(values):
        seg[1 + k, 1, 1] = value
    nib.save(nib.Nifti1Image(seg, np.eye(4)), manifest.parent / subject / f"{subject}_seg.nii.gz")


def _convention(manifest, name):
    raw = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    raw["label_convention"] = name  # the convention is the dataset's: every row
    raw.to_csv(manifest, index=False)
    _write_seg(manifest, "s2", [1, 2])  # valid in every convention


def test_segmentation_values_outside_brats_labels(small_manifest):
    _write_seg(small_manifest, "s1", [3, 5])
    [message] = _messages(small_manifest)
    assert message.startswith("s1: s1_seg.nii.gz: segmentation values 3, 5 outside {0, 1, 2, 4} (label convention "
                              "brats)")
    assert "set the manifest's label_convention to brats2023" in message  # the likely cause, named


def test_label_three_is_accepted_where_the_convention_says_so(small_manifest):
    _write_seg(small_manifest, "s1", [1, 2, 3])
    _convention(small_manifest, "brats2023")
    assert _messages(small_manifest) == []


def test_label_four_is_refused_in_a_brats2023_dataset_and_named_as_post_treatment(small_manifest):
    _write_seg(small_manifest, "s1", [3, 4])
    _convention(small_manifest, "brats2023")
    [message] = _messages(small_manifest)
    assert message.startswith("s1: s1_seg.nii.gz: segmentation values 4 outside {0, 1, 2, 3} (label convention "
                              "brats2023)") and "label_convention brats2024" in message


def test_msd_masks_use_labels_one_to_three(small_manifest):
    _write_seg(small_manifest, "s1", [1, 2, 3])
    _convention(small_manifest, "msd")
    assert _messages(small_manifest) == []
    _write_seg(small_manifest, "s1", [4])
    assert _messages(small_manifest)[0].startswith("s1: s1_seg.nii.gz: segmentation values 4 outside {0, 1, 2, 3}")


def test_unknown_label_convention(small_manifest):
    _edit(small_manifest, "label_convention", 0, "brats2019")
    assert _messages(small_manifest) == ["s1: label_convention: label_convention value 'brats2019' is not one of "
                                         "brats, brats2023, brats2024, msd or blank"]


def test_one_dataset_with_two_label_conventions(small_manifest):
    raw = pd.read_csv(small_manifest, dtype=str, keep_default_na=False)
    raw["dataset"] = "release"
    raw["label_convention"] = ["", "brats2023"]
    raw.to_csv(small_manifest, index=False)
    _write_seg(small_manifest, "s2", [1, 3])
    assert _messages(small_manifest) == ["s2: label_convention: dataset 'release' mixes label conventions brats, "
                                         "brats2023 (s1 is brats); a dataset labels every mask one way"]


@pytest.mark.parametrize("column,value,expected", [
    ("idh", "mutant", "s1: idh: idh value 'mutant' is not one of 0, 1 or blank"),
    ("grade", "3", "s1: grade: grade value '3' is not one of 0, 1, 2 or blank"),
    ("sex", "X", "s1: sex: sex value 'X' is not M, F or blank"),
])
def test_invalid_label_codes(small_manifest, column, value, expected):
    _edit(small_manifest, column, 0, value)
    assert _messages(small_manifest) == [expected]


def test_duplicate_subject_id(small_manifest):
    raw = pd.read_csv(small_manifest, dtype=str, keep_default_na=False)
    pd.concat([raw, raw.iloc[[0]]]).to_csv(small_manifest, index=False)
    assert _messages(small_manifest) == ["s1: subject_id: duplicate subject ID"]


def test_subject_in_two_splits(small_manifest):
    raw = pd.read_csv(small_manifest, dtype=str, keep_default_na=False)
    copy = raw.iloc[[0]].assign(split="test")
    pd.concat([raw, copy]).to_csv(small_manifest, index=False)
    assert _messages(small_manifest) == ["s1: split: subject is in two splits (test, train)"]


def test_every_problem_is_reported_not_just_the_first(small_manifest):
    (small_manifest.parent / "s1" / "s1_t2.nii.gz").unlink()
    _edit(small_manifest, "mgmt", 1, "2")
    assert len(_messages(small_manifest)) == 2


def test_parallel_check_reports_the_same(small_manifest):
    shutil.copy(small_manifest.parent / "s1" / "s1_t1.nii.gz", small_manifest.parent / "s2" / "s2_t1.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((7, 8, 9), np.int16), np.eye(4)), small_manifest.parent / "s2" / "s2_t2.nii.gz")
    serial = [str(p) for p in check_manifest(small_manifest, progress=False).problems]
    parallel = [str(p) for p in check_manifest(small_manifest, workers=2, progress=False).problems]
    assert serial == parallel and serial
