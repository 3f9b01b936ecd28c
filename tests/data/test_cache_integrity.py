"""Issue 14 (files that never half-exist, safe names) and issue 13 (geometry through the cache), cache side."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from gliofed.data.cache import (
    INDEX_COLUMNS,
    cache_lock,
    case_affine,
    load_case,
    preprocess,
    read_index,
    read_settings,
)
from gliofed.data.check import check_manifest
from gliofed.data.dataset import CaseDataset
from gliofed.errors import CacheDamagedError, CacheError, CacheLockedError, ManifestError
from tests.conftest import write_case, write_manifest_rows

UNSAFE = ["../../x", "/abs/x", "a/b", "..", "a\\b", "s 1", ""]


@pytest.fixture
def cache(small_manifest, tmp_path):
    folder = tmp_path / "cache"
    preprocess(small_manifest, folder, size=12, progress=False)
    return folder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------------------------ checksums
def test_index_records_size_and_sha256_of_every_file(cache):
    index = read_index(cache)
    assert list(index.columns) == INDEX_COLUMNS
    for row in index.itertuples():
        image = cache / "cases" / f"{row.subject_id}.image.npy"
        assert row.image_bytes == image.stat().st_size and len(row.image_sha256) == 64
        assert row.seg_bytes == (cache / "cases" / f"{row.subject_id}.seg.npy").stat().st_size
    assert read_settings(cache) == {"size": 12, "preprocess_version": 2}


def test_corrupted_case_is_named_by_the_dataset_and_load_case(cache):
    path = cache / "cases" / "s2.image.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, one voxel altered
    path.write_bytes(bytes(data))
    dataset = CaseDataset(cache)
    dataset[0]  # s1 is intact
    with pytest.raises(CacheDamagedError, match=r"cache case s2 is damaged \(checksum mismatch in .*s2\.image\.npy\); "
                                                r"run `gliofed preprocess` again"):
        dataset[1]
    with pytest.raises(CacheDamagedError, match="checksum mismatch"):
        load_case(cache, "s2")


def test_truncated_case_is_named_and_remade_by_preprocess(small_manifest, cache):
    path = cache / "cases" / "s1.seg.npy"
    path.write_bytes(path.read_bytes()[:100])  # a writer killed mid-file (the old in-place writes)
    with pytest.raises(CacheDamagedError, match=r"cache case s1 is damaged \(size mismatch in .*s1\.seg\.npy"):
        load_case(cache, "s1")
    report = preprocess(small_manifest, cache, size=12, progress=False)
    assert list(report.cases["status"]) == ["done", "cached"]
    assert report.cases["reason"].iloc[0].startswith("damaged cached case re-made (size mismatch")
    image, seg = load_case(cache, "s1")
    assert seg.shape == image.shape[1:]


def test_missing_case_file_is_remade_not_reported_up_to_date(small_manifest, cache):
    (cache / "cases" / "s2.image.npy").unlink()
    report = preprocess(small_manifest, cache, size=12, progress=False)
    assert list(report.cases["status"]) == ["cached", "done"]


def test_index_of_an_older_gliofed_is_refused_by_the_dataset(cache):
    index = read_index(cache).drop(columns=["image_sha256", "seg_sha256", "image_bytes", "seg_bytes"])
    index.to_csv(cache / "index.csv", index=False)
    with pytest.raises(CacheError, match="written by an older gliofed"):
        CaseDataset(cache)


# ---------------------------------------------------------------------------- killed writers, lock
def test_killed_writer_leftovers_and_stale_lock_are_cleared(small_manifest, cache):
    leftover = cache / "cases" / f".s1.image.npy.{_dead_pid()}.tmp"
    leftover.write_bytes(b"\x93NUMPY half a file")
    (cache / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename}))
    report = preprocess(small_manifest, cache, size=12, progress=False)
    assert list(report.cases["status"]) == ["cached", "cached"]
    assert not leftover.exists() and not (cache / ".lock").exists()
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_cache_locked_by_a_live_writer_is_refused(small_manifest, cache):
    before = (cache / "index.csv").read_bytes()
    locked = rf"another preprocess \(PID {os.getpid()}\) is writing this cache"
    with cache_lock(cache), pytest.raises(CacheLockedError, match=locked):
        preprocess(small_manifest, cache, size=12, progress=False)
    assert (cache / "index.csv").read_bytes() == before
    assert not (cache / ".lock").exists()  # released on exit


def test_index_write_killed_before_rename_keeps_the_old_index(small_manifest, cache, monkeypatch):
    import gliofed.fileio

    before = (cache / "index.csv").read_bytes()
    real_replace = os.replace

    def killed(src, dst):
        if str(dst).endswith("index.csv"):
            raise KeyboardInterrupt  # the process dies between writing the temp file and renaming it
        real_replace(src, dst)

    monkeypatch.setattr(gliofed.fileio.os, "replace", killed)
    (small_manifest.parent / "s2" / "s2_t1.nii.gz").touch()
    with pytest.raises(KeyboardInterrupt):
        preprocess(small_manifest, cache, size=12, progress=False)
    assert (cache / "index.csv").read_bytes() == before
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_other_preprocessing_version_in_a_filled_cache_is_refused(small_manifest, cache):
    (cache / "settings.json").write_text(json.dumps({"size": 12, "preprocess_version": 1}))
    with pytest.raises(CacheError, match=r"size 12 \(version 1\), not size 12 \(version 2\)"):
        preprocess(small_manifest, cache, size=12, progress=False)


# ------------------------------------------------------------------------------------ safe names
@pytest.mark.parametrize("name", UNSAFE)
def test_check_reports_an_unsafe_subject_id(small_manifest, name):
    raw = pd.read_csv(small_manifest, dtype=str, keep_default_na=False)
    raw.loc[0, "subject_id"] = name
    raw.to_csv(small_manifest, index=False)
    problems = [p for p in check_manifest(small_manifest, progress=False).problems if p.where == "subject_id"]
    assert len(problems) == 1
    assert ("blank subject ID" if name == "" else "not a safe file name") in problems[0].message


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", ".."])
def test_check_reports_an_unsafe_site(small_manifest, name):
    raw = pd.read_csv(small_manifest, dtype=str, keep_default_na=False)
    raw.loc[1, "site"] = name
    raw.to_csv(small_manifest, index=False)
    problems = check_manifest(small_manifest, progress=False).problems
    assert [(p.subject, p.where) for p in problems] == [("s2", "site")]
    assert "is not a safe name" in problems[0].message


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", ".."])
def test_preprocess_refuses_an_unsafe_subject_id_before_writing(small_manifest, tmp_path, name):
    raw = pd.read_csv(small_manifest, dtype=str, keep_default_na=False)
    raw.loc[1, "subject_id"] = name
    raw.to_csv(small_manifest, index=False)
    before = set(tmp_path.rglob("*"))
    with pytest.raises(ManifestError, match=r"manifest\.csv: row 3: subject_id .* is not a safe file name"):
        preprocess(small_manifest, tmp_path / "cache", size=12, progress=False)
    assert set(tmp_path.rglob("*")) == before  # nothing written, inside the cache or out of it


def test_load_case_refuses_a_subject_that_leaves_the_cache(cache):
    with pytest.raises(CacheError, match="not a safe file name"):
        load_case(cache, "../cache/cases/s1")


# ------------------------------------------------------------------------------------- geometry
def test_spacing_and_affine_follow_orientation_crop_and_resize(tmp_path):
    """An anisotropic, LAS-stored, oblique-free case: the cache grid's spacing and affine in (D, H, W)."""
    affine = np.diag([-0.9, 1.1, 2.5, 1.0])
    affine[:3, 3] = [20.0, -5.0, 3.0]
    paths = write_case(tmp_path / "c", "c", shape=(9, 8, 7), seed=3, affine=affine)
    manifest = write_manifest_rows(tmp_path / "m.csv", [{"subject_id": "c", "site": "x", **paths}])
    preprocess(manifest, tmp_path / "cache", size=6, progress=False)
    row = read_index(tmp_path / "cache").iloc[0]
    # write_case fills every voxel (no zero background): the crop keeps 9 x 8 x 7, resized in-plane to 6 x 6
    assert (row["depth"], row["height"], row["width"]) == (7, 6, 6)
    np.testing.assert_allclose([row["spacing_d"], row["spacing_h"], row["spacing_w"]],
                               [2.5, 1.1 * 8 / 6, 0.9 * 9 / 6], rtol=1e-5)
    grid = case_affine(row)
    # voxel (d, h, w) = (0, 0, 0) of the RAS-oriented grid is the first voxel of the flipped x axis: the world
    # point of the original voxel x = 8, moved by half the resize step (voxel centres)
    x0 = 20.0 - 0.9 * 8 + (0.9 * 9 / 6 - 0.9) / 2
    y0 = -5.0 + (1.1 * 8 / 6 - 1.1) / 2
    np.testing.assert_allclose(grid[:3, 3], [x0, y0, 3.0], atol=1e-4)
    np.testing.assert_allclose(np.abs(grid[:3, :3]).sum(axis=0), [2.5, 1.1 * 8 / 6, 0.9 * 9 / 6], rtol=1e-5)
    assert grid[2, 0] > 0 and grid[1, 1] > 0 and grid[0, 2] > 0  # d -> S, h -> A, w -> R


def test_samples_carry_the_spacing_in_dhw_order(cache):
    dataset = CaseDataset(cache)
    sample = dataset[0]
    expected = dataset.index.loc[0, ["spacing_d", "spacing_h", "spacing_w"]].to_numpy(dtype=np.float32)
    assert sample["spacing"].dtype.is_floating_point
    np.testing.assert_allclose(sample["spacing"].numpy(), expected)
    assert tuple(sample["spacing"].shape) == (3,)


def test_cache_of_an_older_gliofed_is_remade_not_refused(small_manifest, cache):
    """Version 1 caches had no settings.json and no checksums: every case is re-made in place."""
    legacy = read_index(cache)[["subject_id", "dataset", "site", "split", "idh", "codeletion", "mgmt", "grade", "age",
                                "sex", "has_mask", "depth", "height", "width", "fingerprint"]]
    legacy.assign(fingerprint="0123456789abcdef").to_csv(cache / "index.csv", index=False)
    (cache / "settings.json").unlink()
    report = preprocess(small_manifest, cache, size=12, progress=False)
    assert list(report.cases["status"]) == ["done", "done"]
    assert list(read_index(cache).columns) == INDEX_COLUMNS


def test_unreadable_index_is_a_cache_error(cache):
    (cache / "index.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CacheError, match="unreadable cache index"):
        read_index(cache)
