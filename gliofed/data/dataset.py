"""A torch Dataset over the preprocessed cache: patient-level splits, per-site views, modality subsets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data.utils import pad_list_data_collate
from torch.utils.data import Dataset

from gliofed.data.cache import INDEX_COLUMNS, case_spacing, load_case, read_index
from gliofed.data.split import assign_splits
from gliofed.errors import CacheError, ConfigError
from gliofed.vocab import MARKERS, MODALITIES

__all__ = ["CaseDataset", "MODALITY_SETS", "collate_cases"]

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

    Every case's files are checked against the size and SHA-256 recorded in the index when first loaded;
    a damaged case raises :class:`~gliofed.errors.CacheDamagedError` naming it (never silently skipped).

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

    def __len__(self) -> int:
        return len(self.index)

    @property
    def sites(self) -> list[str]:
        return sorted(self.index["site"].unique())

    @property
    def labels(self) -> np.ndarray:
        """Marker labels of every case, (N, 4) int64, -1 unknown."""
        return self.index[list(MARKERS)].to_numpy(dtype=np.int64)

    def for_site(self, site: str) -> CaseDataset:
        """The same view restricted to one site."""
        view = object.__new__(CaseDataset)
        view.__dict__.update(self.__dict__)
        view.index = self.index[self.index["site"] == site].reset_index(drop=True)
        if not len(view.index):
            raise ConfigError(f"site {site!r} has no cases in this view of {self.cache_dir}.")
        return view

    def __getitem__(self, i: int) -> dict:
        row = self.index.iloc[i]
        image, seg = load_case(self.cache_dir, row["subject_id"], bool(row["has_mask"]), record=row.to_dict())
        sample = {
            "image": torch.from_numpy(np.asarray(image[self._channels], dtype=np.float32)),
            "seg": (torch.from_numpy(np.asarray(seg, dtype=np.int64))[None] if seg is not None
                    else torch.zeros((1, *image.shape[1:]), dtype=torch.int64)),
            "has_mask": torch.tensor(seg is not None),
            "labels": torch.tensor([int(row[m]) for m in MARKERS], dtype=torch.int64),
            "spacing": torch.tensor(case_spacing(row), dtype=torch.float32),
            "site": row["site"],
            "subject": row["subject_id"],
        }
        return self.transform(sample) if self.transform is not None else sample


def collate_cases(batch: list[dict]) -> dict:
    """Batch cases of different depths: MONAI's ``pad_list_data_collate`` pads image and seg with zeros."""
    return pad_list_data_collate(batch)

