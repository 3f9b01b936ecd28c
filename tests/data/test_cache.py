import os
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from gliofed.data.cache import load_case, preprocess, read_index
from gliofed.errors import CacheError, ManifestError
from tests.conftest import write_case, write_manifest_rows


def test_cached_case_shapes_dtypes_and_normalisation(tiny_cache):
    index = read_index(tiny_cache)
    row = index[index["has_mask"]].iloc[0]
    image, seg = load_case(tiny_cache, row["subject_id"])
    assert isinstance(image, np.memmap) and image.dtype == np.float16
    assert image.shape == (4, row["depth"], 32, 32) and seg.shape == image.shape[1:]
    assert set(np.unique(seg)) <= {0, 1, 2, 3} and (np.asarray(seg) > 0).any()
    brain = np.asarray(image[0]) != 0
    for c in range(4):
        values = np.asarray(image[c], np.float32)[brain]
        assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05


def test_rerun_skips_up_to_date_cases(small_manifest, tmp_path):
    cache = tmp_path / "cache"
    first = preprocess(small_manifest, cache, size=12, progress=False)
    assert list(first.cases["status"]) == ["done", "done"]
    again = preprocess(small_manifest, cache, size=12, progress=False)
    assert list(again.cases["status"]) == ["cached", "cached"]
    assert load_case(cache, "s1")[0].shape[2:] == (12, 12)


def test_another_size_into_a_filled_cache_is_refused_and_an_emptied_one_accepts_it(small_manifest, tmp_path):
    """Issue 14: one cache, one set of settings (a mixed cache once trained with exit 0)."""
    cache = tmp_path / "cache"
    preprocess(small_manifest, cache, size=12, progress=False)
    with pytest.raises(CacheError, match="cases preprocessed with size 12 .*not size 10"):
        preprocess(small_manifest, cache, size=10, progress=False)
    assert load_case(cache, "s1")[0].shape[2:] == (12, 12)  # untouched
    shutil.rmtree(cache / "cases")
    (cache / "index.csv").unlink()
    assert list(preprocess(small_manifest, cache, size=10, progress=False).cases["status"]) == ["done", "done"]
    assert load_case(cache, "s1")[0].shape[2:] == (10, 10)


def test_changed_input_file_invalidates_only_that_case(small_manifest, tmp_path):
    cache = tmp_path / "cache"
    preprocess(small_manifest, cache, size=12, progress=False)
    path = small_manifest.parent / "s2" / "s2_t1.nii.gz"
    os.utime(path, ns=(0, 0))
    report = preprocess(small_manifest, cache, size=12, progress=False)
    assert list(report.cases["status"]) == ["cached", "done"]


def test_failing_case_is_skipped_with_reason_and_others_continue(small_manifest, tmp_path):
    data = np.arange(7 * 8 * 10, dtype=np.int16).reshape(7, 8, 10)
    nib.save(nib.Nifti1Image(data, np.eye(4)), small_manifest.parent / "s1" / "s1_t2.nii.gz")
    report = preprocess(small_manifest, tmp_path / "cache", size=12, progress=False)
    assert list(report.cases["status"]) == ["skipped", "done"]
    assert report.skipped.iloc[0]["reason"] == "t2: shape (7, 8, 10) differs from t1 shape (7, 8, 9)"
    assert "skipped s1: t2: shape" in str(report)
    assert list(read_index(tmp_path / "cache")["subject_id"]) == ["s2"]
    assert (tmp_path / "cache" / "report.csv").is_file()


def test_missing_and_truncated_files_are_skipped_with_reason(small_manifest, tmp_path):
    (small_manifest.parent / "s1" / "s1_flair.nii.gz").unlink()
    path = small_manifest.parent / "s2" / "s2_t1.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    report = preprocess(small_manifest, tmp_path / "cache", size=12, progress=False)
    reasons = list(report.skipped["reason"])
    assert reasons[0] == "flair file s1_flair.nii.gz not found"
    assert reasons[1] == "s2_t1.nii.gz: truncated or corrupt gzip file"


def test_storage_orientation_does_not_change_the_cache(tmp_path):
    """An LAS-stored copy of a case preprocesses to exactly the same arrays as the RAS original."""
    ras = write_case(tmp_path / "ras", "ras", shape=(9, 8, 7), seed=5)
    las_dir = tmp_path / "las"
    las_dir.mkdir()
    las = {}
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = 8  # x' = 8 - x keeps the same world coordinates
    for key, rel in ras.items():
        image = nib.load(tmp_path / rel)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1].copy(), flip), las_dir / f"las_{key}.nii.gz")
        las[key] = f"las/las_{key}.nii.gz"
    manifest = write_manifest_rows(tmp_path / "m.csv", [
        {"subject_id": "ras", "site": "x", **ras}, {"subject_id": "las", "site": "x", **las}])
    preprocess(manifest, tmp_path / "cache", size=8, progress=False)
    (a, sa), (b, sb) = load_case(tmp_path / "cache", "ras"), load_case(tmp_path / "cache", "las")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(sa), np.asarray(sb))


def test_duplicate_subject_refuses_with_one_sentence(small_manifest, tmp_path):
    raw = pd.read_csv(small_manifest, dtype=str, keep_default_na=False)
    pd.concat([raw, raw.iloc[[1]]]).to_csv(small_manifest, index=False)
    with pytest.raises(ManifestError, match="subject ID s2 appears more than once"):
        preprocess(small_manifest, tmp_path / "cache", progress=False)


def test_reading_a_missing_cache_names_the_folder(tmp_path):
    with pytest.raises(CacheError, match="no preprocessed cache here"):
        read_index(tmp_path)
