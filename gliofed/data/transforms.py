"""MONAI dictionary pipelines: the seed's preprocessing and the training-time augmentation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    LoadImaged,
    MapLabelValued,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandFlipd,
    RandScaleIntensityd,
    Resized,
)

from gliofed.data.check import volume_problems
from gliofed.data.manifest import MODALITIES
from gliofed.errors import DataError

__all__ = ["ValidateCased", "CacheGeometryd", "ToDepthFirstd", "preprocess_pipeline", "augment_pipeline",
           "depth_first_affine", "CaseGeometry", "preprocess_case", "to_original_grid"]


class ValidateCased(MapTransform):
    """Raise :class:`DataError` naming the subject when loaded volumes break the :func:`volume_problems` rules.

    Args:
        keys: the loaded volume keys.
        subject_key: key holding the subject ID for the message (default ``"subject_id"``).
        allow_missing_keys: don't raise if a key is absent (default False).
    """

    def __init__(self, keys, subject_key: str = "subject_id", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.subject_key = subject_key

    def __call__(self, data):
        volumes = {}
        for key in self.key_iterator(data):
            array = np.asarray(data[key])[0]  # channel-first after loading
            volumes[key] = (array, np.asarray(data[key].affine))
        problems = volume_problems(volumes)
        if problems:
            key, message = problems[0]
            raise DataError(f"subject {data.get(self.subject_key, '?')}: {key}: {message}.")
        return data


def depth_first_affine(affine_xyz: np.ndarray) -> np.ndarray:
    """The voxel-to-world affine of a (D, H, W) = (z, y, x) array, from the affine of its (x, y, z) original.

    Args:
        affine_xyz: 4 x 4 affine mapping (x, y, z, 1) voxel indices to world mm.

    Returns:
        4 x 4 float64 affine mapping (d, h, w, 1) to the same world points (its columns permuted).
    """
    return np.asarray(affine_xyz, dtype=np.float64)[:, [2, 1, 0, 3]]


class CacheGeometryd(MapTransform):
    """Record the geometry of the cache grid before :class:`ToDepthFirstd`, from MONAI's tracked metadata.

    MONAI's ``MetaTensor`` carries the affine through orientation, cropping and resizing, so the affine read
    here is the one of the final grid. Adds ``"<key>_affine"`` (4 x 4 float64, (d, h, w, 1) voxel -> world mm,
    RAS) and ``"<key>_spacing"`` (3 float64, mm per voxel along D, H, W).

    Args:
        keys: the MetaTensor keys to record (normally ``"image"``).
        allow_missing_keys: don't raise if a key is absent (default False).
    """

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            affine = depth_first_affine(np.asarray(d[key].affine, dtype=np.float64))
            d[f"{key}_affine"] = affine
            d[f"{key}_spacing"] = np.linalg.norm(affine[:3, :3], axis=0)
        return d


class ToDepthFirstd(MapTransform):
    """(C, x, y, z) in RAS -> (C, D, H, W) = (C, z, y, x): depth is the axial slice axis.

    Args:
        keys: keys to transpose. allow_missing_keys: don't raise if a key is absent (default False).
    """

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(d[key]).permute(0, 3, 2, 1).contiguous()
        return d


def preprocess_pipeline(size: int = 128, with_seg: bool = True) -> Compose:
    """The seed's preprocessing as MONAI dictionary transforms.

    load -> channel first -> validate -> orient to RAS -> stack the four contrasts -> crop to the
    brain (non-zero voxels) -> resample in-plane to ``size`` x ``size`` keeping the slice count
    (area for images, nearest for the mask) -> BraTS label 4 -> 3 -> z-score each contrast over
    brain voxels -> (C, D, H, W).

    Args:
        size: in-plane size (default 128, the seed's).
        with_seg: whether the input dict has a ``seg`` path (default True).

    Returns:
        a Compose taking ``{"subject_id", "t1", "t1ce", "t2", "flair"[, "seg"]}`` paths and returning
        ``image`` float32 (4, D, size, size), ``seg`` (1, D, size, size) with classes 0..3, and the cache grid's
        geometry: ``image_affine`` (4 x 4, (d, h, w) voxel -> world mm, RAS) and ``image_spacing`` (mm along
        D, H, W) — see :class:`CacheGeometryd`.
    """
    volumes = [*MODALITIES, "seg"] if with_seg else list(MODALITIES)
    spatial = ["image", "seg"] if with_seg else ["image"]
    steps = [
        LoadImaged(volumes, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(volumes, channel_dim="no_channel"),
        ValidateCased(volumes),
        Orientationd(volumes, axcodes="RAS", labels=None),
        ConcatItemsd(list(MODALITIES), name="image"),
        DeleteItemsd(list(MODALITIES)),
        CropForegroundd(spatial, source_key="image", allow_smaller=True),
        Resized(["image"], spatial_size=(size, size, -1), mode="area"),
    ]
    if with_seg:
        steps += [
            Resized(["seg"], spatial_size=(size, size, -1), mode="nearest"),
            MapLabelValued("seg", orig_labels=[0, 1, 2, 4], target_labels=[0, 1, 2, 3]),
        ]
    steps += [NormalizeIntensityd("image", nonzero=True, channel_wise=True), CacheGeometryd("image"),
              ToDepthFirstd(spatial)]
    return Compose(steps)


def augment_pipeline(seed: int = 0) -> Compose:
    """Light training augmentation on (C, D, H, W) tensors: left-right flip, intensity scale, gamma.

    The same draw is applied to ``image`` and ``seg``. Args: seed for the random state.
    """
    pipeline = Compose([
        RandFlipd(["image", "seg"], prob=0.5, spatial_axis=2, allow_missing_keys=True),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandAdjustContrastd("image", gamma=(0.8, 1.25), prob=0.3),
    ])
    pipeline.set_random_state(seed)
    return pipeline


@dataclass(frozen=True)
class CaseGeometry:
    """Where a preprocessed case lies in the world, and the scan grid it came from.

    Attributes:
        affine: 4 x 4, (d, h, w, 1) index of the preprocessed (D, H, W) grid -> world mm (RAS+).
        spacing: mm per voxel along D, H, W.
        shape: (D, H, W) of the preprocessed grid.
        original_affine: 4 x 4 affine of the input scans as stored (nibabel), voxel (i, j, k, 1) -> world mm.
        original_shape: (i, j, k) shape of the input scans as stored.
    """

    affine: np.ndarray
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]


def preprocess_case(paths: Mapping[str, str | Path], size: int = 128, subject: str = "case"
                    ) -> tuple[np.ndarray, CaseGeometry]:
    """Preprocess one new case exactly as the cache does, keeping what is needed to map results back.

    Args:
        paths: ``t1``, ``t1ce``, ``t2``, ``flair`` NIfTI paths (co-registered, as for a manifest row).
        size: the in-plane size of the model's cache (from its checkpoint).
        subject: the name used in error messages.

    Returns:
        (image float32 (4, D, size, size), :class:`CaseGeometry`); a prediction on the image grid goes back to
        the scans' grid with :func:`to_original_grid`.

    Raises:
        DataError: a volume breaks the rules of ``gliofed check`` (names the subject and file).
    """
    missing = [m for m in MODALITIES if not paths.get(m)]
    if missing:
        raise DataError(f"subject {subject}: no {', '.join(missing)} file given.")
    out = preprocess_pipeline(size, with_seg=False)({"subject_id": subject, **{m: str(paths[m]) for m in MODALITIES}})
    image = np.asarray(out["image"], dtype=np.float32)
    reference = nib.load(str(paths[MODALITIES[0]]))
    geometry = CaseGeometry(np.asarray(out["image_affine"], dtype=np.float64),
                            tuple(float(v) for v in out["image_spacing"]), tuple(int(v) for v in image.shape[1:]),
                            np.asarray(reference.affine, dtype=np.float64),
                            tuple(int(v) for v in reference.shape[:3]))
    return image, geometry


def to_original_grid(volume: np.ndarray, geometry: CaseGeometry, fill: int | float = 0) -> np.ndarray:
    """Resample a (D, H, W) volume on the preprocessed grid back to the scans' stored grid (nearest neighbour).

    Every stored voxel takes the value of the preprocessed voxel whose centre is nearest its world position
    (through the two affines), so orientation, crop and in-plane resize are all undone; voxels outside the
    crop get ``fill``. Nearest neighbour keeps label values (use it for segmentations).

    Args:
        volume: (D, H, W) array on ``geometry.shape``.
        geometry: from :func:`preprocess_case` (or a cache index row's affine and the scans' header).
        fill: value outside the preprocessed grid (default 0, background).

    Returns:
        array of ``geometry.original_shape`` and ``volume``'s dtype, to save with ``geometry.original_affine``.
    """
    volume = np.asarray(volume)
    if volume.shape != geometry.shape:
        raise DataError(f"volume of shape {volume.shape} is not on the preprocessed grid {geometry.shape}.")
    to_cache = np.linalg.inv(geometry.affine) @ geometry.original_affine  # stored voxel -> preprocessed voxel
    ni, nj, nk = geometry.original_shape
    out = np.full(geometry.original_shape, fill, dtype=volume.dtype)
    ii, jj = np.meshgrid(np.arange(ni), np.arange(nj), indexing="ij")
    for k in range(nk):  # one stored slice at a time keeps memory at one slice of coordinates
        points = np.stack([ii, jj, np.full_like(ii, k), np.ones_like(ii)]).reshape(4, -1)
        d, h, w = np.rint(to_cache[:3] @ points).astype(np.int64)
        inside = (d >= 0) & (d < volume.shape[0]) & (h >= 0) & (h < volume.shape[1]) & (w >= 0) & (w < volume.shape[2])
        values = np.full(points.shape[1], fill, dtype=volume.dtype)
        values[inside] = volume[d[inside], h[inside], w[inside]]
        out[:, :, k] = values.reshape(ni, nj)
    return out
