"""Issue 13: preprocessing a new case keeps what is needed to put a prediction back on the scans' grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from gliofed.data.transforms import preprocess_case, preprocess_pipeline, to_original_grid


def _oblique_lps_case(folder, shape=(10, 10, 7)):
    """Four contrasts + a seg with a blob, stored LPS, anisotropic (0.9 x 1.2 x 2.0 mm), rotated 10 degrees."""
    angle = np.deg2rad(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0, -1.0, 1.0]) @ np.diag([0.9, 1.2, 2.0])
    affine[:3, 3] = [30.0, 40.0, -12.0]
    rng = np.random.default_rng(7)
    paths = {}
    for key in ("t1", "t1ce", "t2", "flair"):
        nib.save(nib.Nifti1Image((rng.random(shape) * 100 + 1).astype(np.float32), affine), folder / f"{key}.nii.gz")
        paths[key] = str(folder / f"{key}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    seg[1:5, 6:9, 2:5] = 2
    seg[2:4, 7:8, 3:4] = 4
    seg[7, 1:3, 1] = 1
    nib.save(nib.Nifti1Image(seg, affine), folder / "seg.nii.gz")
    paths["seg"] = str(folder / "seg.nii.gz")
    return paths, affine, seg


def _cached_seg(paths, size):
    return np.asarray(preprocess_pipeline(size, with_seg=True)({"subject_id": "x", **paths})["seg"][0], np.uint8)


def test_round_trip_without_resize_puts_every_label_back_exactly(tmp_path):
    paths, affine, seg = _oblique_lps_case(tmp_path)
    image, geometry = preprocess_case(paths, size=10)
    assert image.shape == (4, 7, 10, 10) and geometry.shape == (7, 10, 10)
    np.testing.assert_allclose(geometry.original_affine, affine)
    assert geometry.original_shape == seg.shape
    back = to_original_grid(_cached_seg(paths, 10), geometry)
    restored = np.where(back == 3, 4, back)  # cache class 3 is BraTS label 4
    np.testing.assert_array_equal(restored, seg)


@pytest.mark.parametrize("size", [8, 16])
def test_round_trip_with_resize_keeps_the_blob_in_place(tmp_path, size):
    paths, _, seg = _oblique_lps_case(tmp_path)
    _, geometry = preprocess_case(paths, size=size)
    back = to_original_grid(_cached_seg(paths, size), geometry)
    truth, found = seg > 0, back > 0
    dice = 2 * (truth & found).sum() / (truth.sum() + found.sum())
    assert dice > 0.6, dice
    centre = np.argwhere(seg == 2).mean(0)
    assert np.abs(np.argwhere(back == 2).mean(0) - centre).max() < 1.0  # within one stored voxel


def test_a_volume_off_the_preprocessed_grid_is_refused(tmp_path):
    from gliofed.errors import DataError

    paths, _, _ = _oblique_lps_case(tmp_path)
    _, geometry = preprocess_case(paths, size=10)
    with pytest.raises(DataError, match="not on the preprocessed grid"):
        to_original_grid(np.zeros((7, 10, 9)), geometry)
