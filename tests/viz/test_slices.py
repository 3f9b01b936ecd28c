"""Slice geometry: planes, largest tumour slice, spacing (recorded or estimated), orientation labels, windows."""

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from gliofed.viz.slices import (
    estimated_spacing,
    intensity_window,
    largest_tumour_slice,
    plane_geometry,
    plane_slice,
    spacing_from_index,
)
from tests.conftest import write_manifest_rows

SHAPE = (7, 8, 9)


def test_each_plane_keeps_the_other_two_axes_in_order():
    volume = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    assert plane_slice(volume, "axial", 2).shape == (8, 9)
    assert plane_slice(volume, "coronal", 2).shape == (7, 9)
    assert np.array_equal(plane_slice(volume, "sagittal", 2), volume[:, :, 2])


def test_largest_tumour_slice_in_each_plane():
    mask = np.zeros(SHAPE, np.uint8)
    mask[1, 2, 3] = 1
    mask[5, 1:7, 1:8] = 2  # the big cross-section: axial slice 5
    mask[2:4, 6, 8] = 3
    assert largest_tumour_slice(mask, "axial") == 5
    assert largest_tumour_slice(mask, "coronal") == int(np.argmax((mask > 0).sum((0, 2))))
    assert largest_tumour_slice(mask, "sagittal") == int(np.argmax((mask > 0).sum((0, 1))))


def test_no_tumour_has_no_largest_slice():
    assert largest_tumour_slice(np.zeros(SHAPE)) is None and largest_tumour_slice(None) is None


def test_estimated_spacing_gives_the_crop_the_same_extent_on_every_axis():
    spacing = estimated_spacing(SHAPE)
    extents = [n * s for n, s in zip(SHAPE, spacing)]
    assert extents == pytest.approx([extents[0]] * 3) and spacing[2] == 1.0


@pytest.mark.parametrize(("row", "expected"), [
    ({"spacing_d": 3.0, "spacing_h": 1.5, "spacing_w": 2.25}, (3.0, 1.5, 2.25)),
    ({"depth": 7}, None),  # a cache written before spacing was recorded
    ({"spacing_d": math.nan, "spacing_h": 1.5, "spacing_w": 2.25}, None),
    ({"spacing_d": "", "spacing_h": 1.5, "spacing_w": 2.25}, None),
])
def test_spacing_comes_from_the_index_when_it_has_it(row, expected):
    assert spacing_from_index(pd.Series(row)) == expected


def test_voxels_are_drawn_at_their_size():
    geometry = plane_geometry(SHAPE, (3.0, 1.0, 0.5), "coronal")  # rows: D (3 mm), columns: W (0.5 mm)
    assert (geometry.dx, geometry.dy) == (0.5, 3.0)
    assert geometry.aspect == pytest.approx((9 * 0.5) / (7 * 3.0))
    assert geometry.x_range[0] > geometry.x_range[1]  # reversed: radiological


def test_window_is_robust_to_a_few_hot_voxels():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=SHAPE).astype(np.float32)
    volume[0, 0, :2] = 1000.0  # 0.4 % of the voxels
    low, high = intensity_window(volume)
    assert -4 < low < high < 4


def _write_volume(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path.name


def test_labels_name_the_patient_directions_of_the_cache_grid(tmp_path):
    """A marker at the patient's right, anterior, superior corner of an LPS-stored scan goes through the real
    preprocessing; in the axial view it must land next to the R and A labels, in the coronal view next to R and S."""
    from gliofed.data.cache import load_case, preprocess

    # LPS storage: voxel i grows towards Left, j towards Posterior, k towards Superior; spacing 2 x 1.5 x 3 mm
    affine = np.diag([-2.0, -1.5, 3.0, 1.0])
    shape = (9, 8, 7)
    data = np.full(shape, 100, np.int16)
    data[0:2, 0:2, 5:7] = 1000  # low i = Right, low j = Anterior, high k = Superior
    seg = np.zeros(shape, np.uint8)
    seg[3:5, 3:5, 2:4] = 2
    folder = tmp_path / "s1"
    folder.mkdir()
    paths = {key: f"s1/{_write_volume(folder / f's1_{key}.nii.gz', data, affine)}" for key in ("t1", "t1ce", "t2",
                                                                                             "flair")}
    paths["seg"] = f"s1/{_write_volume(folder / 's1_seg.nii.gz', seg, affine)}"
    manifest = write_manifest_rows(tmp_path / "manifest.csv", [{"subject_id": "s1", "dataset": "fixture", "site": "a",
                                                                 **paths, "split": "test"}])
    preprocess(manifest, tmp_path / "cache", size=8, progress=False)
    image, _ = load_case(tmp_path / "cache", "s1")
    d, h, w = np.unravel_index(int(np.argmax(np.asarray(image[3], np.float32))), image.shape[1:])
    spacing = (3.0, 1.5, 2.25)

    axial = plane_geometry(image.shape[1:], spacing, "axial")
    x, y = axial.x0 + w * axial.dx, axial.y0 + h * axial.dy
    screen_left, screen_top = axial.x_range[0], axial.y_range[1]
    assert abs(x - screen_left) < abs(x - axial.x_range[1]) and axial.labels[0] == "R"
    assert abs(y - screen_top) < abs(y - axial.y_range[0]) and axial.labels[3] == "A"

    coronal = plane_geometry(image.shape[1:], spacing, "coronal")
    x, y = coronal.x0 + w * coronal.dx, coronal.y0 + d * coronal.dy
    assert abs(x - coronal.x_range[0]) < abs(x - coronal.x_range[1]) and coronal.labels[0] == "R"
    assert abs(y - coronal.y_range[1]) < abs(y - coronal.y_range[0]) and coronal.labels[3] == "S"

    sagittal = plane_geometry(image.shape[1:], spacing, "sagittal")
    x = sagittal.x0 + h * sagittal.dx
    assert abs(x - sagittal.x_range[0]) < abs(x - sagittal.x_range[1]) and sagittal.labels[0] == "A"
