"""MONAI dictionary pipelines: the one preprocessing pipeline of a :class:`~gliofed.preprocessing.Preprocessing`
record (cache and ``predict``) and the training-time augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
from gliofed.data.conventions import DEFAULT_CONVENTION, convention
from gliofed.errors import DataError
from gliofed.preprocessing import Preprocessing
from gliofed.vocab import MODALITIES

__all__ = ["ValidateCased", "FiniteImaged", "CacheGeometryd", "ToDepthFirstd", "plan_pipeline", "preprocess_pipeline",
           "augment_pipeline", "depth_first_affine", "AUGMENTATION", "AugmentDraws", "draw_augmentation",
           "augment_batch"]

#: the training augmentation's distribution, shared by the per-case MONAI pipeline (:func:`augment_pipeline`) and
#: the batched device version (:func:`draw_augmentation`, :func:`augment_batch`): a left-right flip with
#: probability 0.5; with probability 0.5 an intensity scale ``x * (1 + f)``, f ~ U(-0.1, 0.1); with probability 0.3
#: a gamma ``((x - min) / (range + 1e-7)) ** g * range + min`` over the whole case, g ~ U(0.8, 1.25)
AUGMENTATION = {"flip_prob": 0.5, "scale_prob": 0.5, "scale": 0.1, "gamma_prob": 0.3, "gamma": (0.8, 1.25)}
#: MONAI's ``AdjustContrast`` epsilon
_GAMMA_EPSILON = 1e-7


class ValidateCased(MapTransform):
    """Raise :class:`DataError` naming the subject when loaded volumes break the :func:`volume_problems` rules.

    Args:
        keys: the loaded volume keys.
        subject_key: key holding the subject ID for the message (default ``"subject_id"``).
        label_convention: how ``seg`` is labelled (default ``brats``; :mod:`gliofed.data.conventions`).
        allow_missing_keys: don't raise if a key is absent (default False).
    """

    def __init__(self, keys, subject_key: str = "subject_id", label_convention: str = DEFAULT_CONVENTION,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.subject_key = subject_key
        self.label_convention = convention(label_convention).name

    def __call__(self, data):
        volumes = {}
        for key in self.key_iterator(data):
            array = np.asarray(data[key])[0]  # channel-first after loading
            volumes[key] = (array, np.asarray(data[key].affine))
        problems = volume_problems(volumes, self.label_convention)
        if problems:
            key, message = problems[0]
            raise DataError(f"subject {data.get(self.subject_key, '?')}: {key}: {message}.")
        return data


class FiniteImaged(MapTransform):
    """Raise :class:`DataError` naming the subject and contrast when a stacked image holds NaN or Inf (after
    z-scoring: finite input whose statistics overflow float32 would otherwise pass on silently).

    Args:
        keys: the stacked image keys (channel ``i`` is ``channels[i]``).
        channels: the contrast of each channel, for the message (default the four, in order).
        subject_key: key holding the subject ID (default ``"subject_id"``).
        allow_missing_keys: don't raise if a key is absent (default False).
    """

    def __init__(self, keys, channels=MODALITIES, subject_key: str = "subject_id",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels, self.subject_key = tuple(channels), subject_key

    def __call__(self, data):
        for key in self.key_iterator(data):
            image = torch.as_tensor(data[key])
            finite = torch.isfinite(image).flatten(1).all(1)
            if not bool(finite.all()):
                channel = int((~finite).nonzero()[0, 0])
                name = self.channels[channel] if channel < len(self.channels) else f"channel {channel}"
                raise DataError(f"subject {data.get(self.subject_key, '?')}: {name}: NaN/Inf values after z-scoring "
                                "(intensities whose statistics overflow float32).")
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


def plan_pipeline(plan: Preprocessing, contrasts: Sequence[str] | None = None, with_seg: bool = False,
                  cache_layout: bool = True, label_convention: str | None = None) -> Compose:
    """The one preprocessing pipeline, built from a :class:`~gliofed.preprocessing.Preprocessing` record: the cache
    runs it (:func:`preprocess_pipeline`) and ``predict`` runs it and inverts it (:func:`gliofed.inference.Predictor`,
    MONAI's :class:`~monai.transforms.Invertd` undoes every spatial step recorded on ``image``).

    load -> channel first -> validate -> stack the contrasts -> orient to ``plan.orientation`` -> crop to the non-zero
    voxels of the stack -> resample in-plane to ``plan.size`` x ``plan.size`` keeping the slice count (area for
    images, nearest for the mask) -> mask labels to classes (BraTS 4 -> 3, or the dataset's own convention) ->
    z-score each contrast over its non-zero voxels (NaN/Inf refused,
    :class:`FiniteImaged`) [-> the cache grid's geometry -> (C, D, H, W)].

    The contrasts are stacked before orienting: equal to orienting each (they share one grid, validated), and
    ``Invertd`` can only undo the transforms recorded on the key it inverts.

    Args:
        plan: the record (size and settings).
        contrasts: the contrasts to load and stack, in channel order (default ``plan.modalities``); all of them find
            the brain for the crop, as in training.
        with_seg: the input dict also has a ``seg`` path, preprocessed with the image (default False).
        cache_layout: end with the cache grid's geometry and the (C, D, H, W) layout (default True); False leaves
            ``image`` a channel-first RAS MetaTensor whose recorded steps :class:`~monai.transforms.Invertd` undoes.
        label_convention: how the mask is labelled (:mod:`gliofed.data.conventions`; default the record's
            ``label_convention``, else ``brats``: 0/1/2/4). A value outside it is a :class:`DataError`.

    Returns:
        a Compose taking ``{"subject_id", <contrast>: path ...[, "seg": path]}``.
    """
    keys = list(contrasts or plan.modalities)
    labels = label_convention or plan.label_convention or DEFAULT_CONVENTION
    volumes = [*keys, "seg"] if with_seg else keys
    spatial = ["image", "seg"] if with_seg else ["image"]
    steps = [
        LoadImaged(volumes, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(volumes, channel_dim="no_channel"),
        ValidateCased(volumes, label_convention=labels),
        ConcatItemsd(keys, name="image"),
        DeleteItemsd(keys),
        Orientationd(spatial, axcodes=plan.orientation, labels=None),
        CropForegroundd(spatial, source_key="image", allow_smaller=True),
        Resized(["image"], spatial_size=(plan.size, plan.size, -1), mode=plan.resize),
    ]
    if with_seg:
        steps += [
            Resized(["seg"], spatial_size=(plan.size, plan.size, -1), mode="nearest"),
            MapLabelValued("seg", orig_labels=list(convention(labels).to_class),
                           target_labels=list(convention(labels).to_class.values())),
        ]
    steps += [NormalizeIntensityd("image", nonzero=True, channel_wise=True), FiniteImaged("image", channels=keys)]
    if cache_layout:
        steps += [CacheGeometryd("image"), ToDepthFirstd(spatial)]
    return Compose(steps)


def preprocess_pipeline(size: int | Preprocessing = 128, with_seg: bool = True,
                        label_convention: str = DEFAULT_CONVENTION) -> Compose:
    """The cache's preprocessing: :func:`plan_pipeline` over the four contrasts with the cache layout.

    Args:
        size: a :class:`~gliofed.preprocessing.Preprocessing` record, or an in-plane size (the default record at that
            size; default 128, the seed's).
        with_seg: whether the input dict has a ``seg`` path (default True).
        label_convention: how the mask is labelled (default ``brats``: 0/1/2/4; ``brats2023``, ``brats2024``,
            ``msd``: :mod:`gliofed.data.conventions`). A value outside it is a :class:`DataError`.

    Returns:
        a Compose taking ``{"subject_id", "t1", "t1ce", "t2", "flair"[, "seg"]}`` paths and returning
        ``image`` float32 (4, D, size, size), ``seg`` (1, D, size, size) with classes 0..3, and the cache grid's
        geometry: ``image_affine`` (4 x 4, (d, h, w) voxel -> world mm, RAS) and ``image_spacing`` (mm along
        D, H, W) — see :class:`CacheGeometryd`.
    """
    plan = size if isinstance(size, Preprocessing) else Preprocessing(size=int(size))
    return plan_pipeline(plan, MODALITIES, with_seg=with_seg, label_convention=label_convention)


def augment_pipeline(seed: int = 0) -> Compose:
    """Light training augmentation on (C, D, H, W) tensors: left-right flip, intensity scale, gamma
    (:data:`AUGMENTATION`), one case at a time on the CPU (a DataLoader's workers run it).

    The same draw is applied to ``image`` and ``seg``. Args: seed for the random state.
    The batched, seeded version that runs on the training device is :func:`augment_batch`.
    """
    pipeline = Compose([
        RandFlipd(["image", "seg"], prob=AUGMENTATION["flip_prob"], spatial_axis=2, allow_missing_keys=True),
        RandScaleIntensityd("image", factors=AUGMENTATION["scale"], prob=AUGMENTATION["scale_prob"]),
        RandAdjustContrastd("image", gamma=AUGMENTATION["gamma"], prob=AUGMENTATION["gamma_prob"]),
    ])
    pipeline.set_random_state(seed)
    pipeline.gliofed_augmentation = True  # the engine replaces this pipeline, never stacks a second one on it
    return pipeline


@dataclass(frozen=True)
class AugmentDraws:
    """One batch's augmentation draws (host tensors, one entry per case).

    Attributes:
        flip: (B,) bool, flip left-right.
        scale: (B,) bool, scale the intensities; factor: (B,) float64, the factor ``f`` of ``x * (1 + f)``.
        gamma: (B,) bool, apply a gamma; gamma_value: (B,) float64, the exponent.
    """

    flip: torch.Tensor
    scale: torch.Tensor
    factor: torch.Tensor
    gamma: torch.Tensor
    gamma_value: torch.Tensor


def draw_augmentation(n: int, generator: torch.Generator) -> AugmentDraws:
    """Draw the augmentation of ``n`` cases from ``generator`` (a CPU ``torch.Generator``), with the distribution
    of :data:`AUGMENTATION` (the one :func:`augment_pipeline` draws from).

    The draws come from the host, so they are the same whatever device applies them and need no device sync.

    Returns:
        :class:`AugmentDraws` of ``n`` cases.
    """
    u = torch.rand((n, 5), generator=generator, dtype=torch.float64)
    low, high = AUGMENTATION["gamma"]
    return AugmentDraws(flip=u[:, 0] < AUGMENTATION["flip_prob"], scale=u[:, 1] < AUGMENTATION["scale_prob"],
                        factor=AUGMENTATION["scale"] * (2 * u[:, 2] - 1), gamma=u[:, 3] < AUGMENTATION["gamma_prob"],
                        gamma_value=low + (high - low) * u[:, 4])


def augment_batch(image: torch.Tensor, seg: torch.Tensor | None, draws: AugmentDraws,
                  regions: torch.Tensor | None = None) -> None:
    """Apply ``draws`` in place to a batch, on whatever device it lives (the training device): the batched form of
    :func:`augment_pipeline`, with the same operations in the same order (flip, scale, gamma) per case.

    Args:
        image: (B, C, D, H, W) floating point, modified in place.
        seg: (B, 1, D, H, W) or None; flipped with its image, in place.
        draws: :func:`draw_augmentation` of B cases.
        regions: (B, 3, 2) int64 start / stop of each case's own voxels along D, H, W inside the padded batch
            (``collate_cases`` records them); the gamma's minimum and range are taken there, as on the unpadded case,
            and the padding stays zero. Default: the whole volume.
    """
    for i in range(image.shape[0]):
        box = (slice(None),) if regions is None else (slice(None), *(slice(int(a), int(b)) for a, b in regions[i]))
        x = image[i][box]
        if bool(draws.flip[i]):
            x.copy_(x.flip(-1))
            if seg is not None:
                s = seg[i][box]
                s.copy_(s.flip(-1))
        if bool(draws.scale[i]):
            x.mul_(1 + float(draws.factor[i]))
        if bool(draws.gamma[i]):
            low = x.amin()
            spread = x.amax() - low
            x.sub_(low).div_(spread + _GAMMA_EPSILON).pow_(float(draws.gamma_value[i])).mul_(spread).add_(low)
