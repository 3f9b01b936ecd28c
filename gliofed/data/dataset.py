"""A torch Dataset over the preprocessed cache: patient-level splits, per-site views, modality subsets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from gliofed.data.cache import INDEX_COLUMNS, case_spacing, load_case, read_index, remember_checksums, verify_cases
from gliofed.data.split import assign_splits
from gliofed.errors import CacheError, ConfigError
from gliofed.vocab import MARKERS, MODALITIES

__all__ = ["CaseDataset", "MODALITY_SETS", "collate_cases", "fixed_depth"]

#: the seed's modality ablation (its Fig. 3)
MODALITY_SETS: dict[str, tuple[str, ...]] = {
    "T1": ("t1",),
    "T1+T2": ("t1", "t2"),
    "T1+T2+T1ce": ("t1", "t2", "t1ce"),
    "all": MODALITIES,
}


class CaseDataset(Dataset):
    """Cached cases as training samples.

    Args:
        cache_dir: a cache written by :func:`gliofed.data.cache.preprocess`.
        split: keep only ``train``, ``test`` or ``external`` cases (default: all).
        sites: keep only these sites (default: all).
        modalities: channels to return, in this order (default t1, t1ce, t2, flair).
        seed: seeds the split of cases whose manifest split is blank (70/30, stratified by site).
        external_site: hold this site out as ``external`` (overrides its manifest split).
        transform: optional callable on the sample dict (e.g. :func:`augment_pipeline`).

    Each sample is a dict: ``image`` float32 (C, D, H, W); ``seg`` int64 (1, D, H, W), zeros when the
    case has no mask; ``has_mask`` bool; ``labels`` int64 (4,) in :data:`MARKERS` order, -1 unknown;
    ``spacing`` float32 (3,), the voxel size in mm along (D, H, W) (for HD95 in mm); ``site``; ``subject``.
    :attr:`index` holds the cache index rows of the view, with ``spacing_d``, ``spacing_h``, ``spacing_w`` and
    ``affine`` (see :mod:`gliofed.data.cache`).

    :meth:`stored` is the same view in the cache's own types (image float16, seg uint8), for a loader that converts
    on the training device.

    Every case's files are checked against the size and SHA-256 recorded in the index when first loaded, once per
    process and file version; :meth:`verify` checks them all at once, and a DataLoader's worker processes inherit
    those checks (they do not hash the cases again). A damaged case raises :class:`~gliofed.errors.CacheDamagedError`
    naming it (never silently skipped).

    >>> ds = CaseDataset("cache", split="train", modalities=("t1", "t2"))  # doctest: +SKIP
    >>> ds[0]["image"].shape  # doctest: +SKIP
    torch.Size([2, 16, 32, 32])
    """

    def __init__(self, cache_dir: str | Path, split: str | None = None, sites: Sequence[str] | None = None,
                 modalities: Sequence[str] = MODALITIES, seed: int = 0, external_site: str | None = None,
                 transform=None) -> None:
        self.cache_dir = Path(cache_dir)
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ConfigError(f"modalities {list(modalities)} must be a non-empty subset of {', '.join(MODALITIES)}.")
        self.modalities = tuple(modalities)
        self._channels = [MODALITIES.index(m) for m in self.modalities]
        index = read_index(self.cache_dir)
        missing = [c for c in INDEX_COLUMNS if c not in index.columns]
        if missing:
            raise CacheError(f"{cache_dir}: cache index lacks {', '.join(missing[:3])} (written by an older gliofed); "
                             "run `gliofed preprocess` again into a new cache folder.")
        #: the deepest case of the whole cache (every split and site): a fixed batch depth that every view agrees on
        self.cache_max_depth = int(index["depth"].max()) if len(index) else 0
        blank = index["split"].isna() | (index["split"] == "")
        if blank.any():
            index.loc[blank, "split"] = assign_splits(index, seed=seed)[blank]
        if external_site is not None:
            if external_site not in set(index["site"]):
                raise ConfigError(f"external site {external_site!r} is not a site of the cache {cache_dir}.")
            index.loc[index["site"] == external_site, "split"] = "external"
            if split != "external":
                index = index[index["site"] != external_site]
        if split is not None:
            index = index[index["split"] == split]
        if sites is not None:
            missing = set(sites) - set(index["site"])
            if missing:
                raise ConfigError(f"site(s) {', '.join(sorted(missing))} have no {split or ''} cases in {cache_dir}.")
            index = index[index["site"].isin(list(sites))]
        self.index = index.reset_index(drop=True)
        self.transform = transform
        self._stored = False
        self._checksums: dict = {}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def sites(self) -> list[str]:
        return sorted(self.index["site"].unique())

    @property
    def labels(self) -> np.ndarray:
        """Marker labels of every case, (N, 4) int64, -1 unknown."""
        return self.index[list(MARKERS)].to_numpy(dtype=np.int64)

    def _view(self, **changes) -> CaseDataset:
        view = object.__new__(CaseDataset)
        view.__dict__.update(self.__dict__)
        view.__dict__.update(changes)
        return view

    def for_site(self, site: str) -> CaseDataset:
        """The same view restricted to one site."""
        view = self._view(index=self.index[self.index["site"] == site].reset_index(drop=True))
        if not len(view.index):
            raise ConfigError(f"site {site!r} has no cases in this view of {self.cache_dir}.")
        return view

    def stored(self, transform=None) -> CaseDataset:
        """The same cases in the cache's own types: ``image`` float16 (C, D, H, W), ``seg`` uint8 (1, D, H, W), with
        ``transform`` (default none) instead of this view's. Nothing is converted on the CPU: the training loop
        casts on its device (half the bytes to read, pin and copy)."""
        return self._view(_stored=True, transform=transform)

    def with_transform(self, transform) -> CaseDataset:
        """The same view (same types) with ``transform`` instead of this view's own."""
        return self._view(transform=transform)

    def verify(self, workers: int = 4) -> None:
        """Check every case's files against the index now (size and SHA-256, ``workers`` threads), once per file
        version in this process; copies of this dataset sent to DataLoader workers carry the result, so the workers
        never hash a case again.

        Raises:
            CacheDamagedError: a file is missing, truncated or altered (names the subject and file).
        """
        self._checksums = verify_cases(self.cache_dir, self.index.to_dict("records"), workers=workers)

    def __setstate__(self, state: dict) -> None:
        # a copy unpickled in a worker process: trust the checksums its parent computed for these file versions
        self.__dict__.update(state)
        remember_checksums(state.get("_checksums") or {})

    def __getitem__(self, i: int) -> dict:
        row = self.index.iloc[i]
        image, seg = load_case(self.cache_dir, row["subject_id"], bool(row["has_mask"]), record=row.to_dict())
        if self._stored:
            every = self._channels == list(range(image.shape[0]))
            data = np.array(image) if every else image[self._channels]  # one copy out of the memory map
            pixels = torch.from_numpy(data.astype(np.float16, copy=False))
            mask = (torch.from_numpy(np.array(seg, dtype=np.uint8))[None] if seg is not None
                    else torch.zeros((1, *image.shape[1:]), dtype=torch.uint8))
        else:
            pixels = torch.from_numpy(np.asarray(image[self._channels], dtype=np.float32))
            mask = (torch.from_numpy(np.asarray(seg, dtype=np.int64))[None] if seg is not None
                    else torch.zeros((1, *image.shape[1:]), dtype=torch.int64))
        sample = {
            "image": pixels,
            "seg": mask,
            "has_mask": torch.tensor(seg is not None),
            "labels": torch.tensor([int(row[m]) for m in MARKERS], dtype=torch.int64),
            "spacing": torch.tensor(case_spacing(row), dtype=torch.float32),
            "site": row["site"],
            "subject": row["subject_id"],
        }
        return self.transform(sample) if self.transform is not None else sample


def fixed_depth(max_depth: int, multiple: int) -> int:
    """``max_depth`` rounded up to a multiple of ``multiple`` (at least one multiple): one batch depth for a run."""
    multiple = max(int(multiple), 1)
    return max(-(-int(max_depth) // multiple), 1) * multiple


def _plain(value):
    # MONAI's transforms return MetaTensors; a batch of plain tensors keeps the model off the metadata machinery
    return value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value


def _fit(value: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Centre ``value`` (C, *spatial) in ``shape`` (spatial): symmetric zero padding where it is smaller (MONAI's
    ``SpatialPad``: the odd voxel after), a centre crop where it is larger. Returns it and its voxels' [start, stop)
    along each spatial axis."""
    crops, pads, region = [], [], []
    for size, target in zip(value.shape[1:], shape):
        if size >= target:
            start = (size - target) // 2
            crops.append(slice(start, start + target))
            pads.append((0, 0))
            region.append((0, target))
        else:
            before = (target - size) // 2
            crops.append(slice(None))
            pads.append((before, target - size - before))
            region.append((before, before + size))
    value = value[(slice(None), *crops)]
    if any(p != (0, 0) for p in pads):
        out = value.new_zeros((value.shape[0], *shape))
        out[(slice(None), *(slice(a, a + n) for (a, _), n in zip(pads, value.shape[1:])))] = value
        value = out
    return value, region


def collate_cases(batch: list[dict], depth: int | None = None) -> dict:
    """Batch cases of different depths.

    Every tensor with a channel and spatial axes (``image``, ``seg``) is centred in the batch's largest spatial
    shape by symmetric zero padding (the values of MONAI's ``pad_list_data_collate``); with ``depth`` the first
    spatial axis is padded or centre-cropped to exactly ``depth`` (one shape for every batch of a run: compiled
    models and cuDNN's autotuner see one shape). The other keys are stacked as torch's ``default_collate`` does.

    Args:
        batch: samples of :class:`CaseDataset` (any dtype, any device: the padding is made where they live).
        depth: a fixed depth, or None for the batch's deepest case.

    Returns:
        the batch dict, plus ``region``: (B, 3, 2) int64, where each case's own voxels lie along (D, H, W).
    """
    out: dict = {}
    regions = None
    for key in batch[0]:
        values = [_plain(sample[key]) for sample in batch]
        spatial = all(isinstance(v, torch.Tensor) and v.ndim >= 2 for v in values)
        if not spatial:
            out[key] = default_collate(values)
            continue
        shape = [max(v.shape[axis] for v in values) for axis in range(1, values[0].ndim)]
        if depth is not None and len(shape) == 3:
            shape[0] = int(depth)
        fitted = [_fit(v, tuple(shape)) for v in values]
        out[key] = torch.stack([value for value, _ in fitted])
        if key == "image" or regions is None:
            regions = [region for _, region in fitted]
    if regions is not None and all(len(r) == 3 for r in regions):
        out["region"] = torch.tensor(regions, dtype=torch.int64)
    return out
