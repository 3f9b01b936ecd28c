"""Initialisation: the synthetic volumes a condensation starts from, and their masks.

``"class_stats"`` (default): a synthetic lesion painted into the site's mean anatomy (:func:`site_template`), with,
per tumour class and contrast, the mean and spread of real voxels of the group of cases that shares the volume's
label vector (:func:`~gliofed.federated.site.condense.grouping.summary_groups`), plus noise; the lesion is an
ellipsoid (enhancing rim, core, oedema) centred near that group's mean lesion centroid and sized from its mean region
volumes, inside the template's brain. ``"noise"``: standard normal. Neither copies a patient's voxels.
``"real_unsafe"`` starts from down-sampled real cases: for teaching only (the privacy audit flags it, and a site's
operator must allow it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gliofed.federated.site.condense._cases import real_batches
from gliofed.federated.site.condense.grouping import group_for, summary_groups

__all__ = ["site_template", "init_synthetic", "reference_shape", "case_statistics", "class_fractions",
           "lesion_centres", "synthetic_masks"]


def reference_shape(dataset, scale: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The site's full-resolution grid (median depth, its in-plane size) and the grid ``1 / scale`` of it (each side
    at least 2) on which synthetic volumes are stored."""
    depth = int(np.median(dataset.index["depth"]))
    shape = (depth, int(dataset.index["height"].iloc[0]), int(dataset.index["width"].iloc[0]))
    low = tuple(max(2, int(np.ceil(s / scale))) for s in shape)
    return shape, low


def case_statistics(dataset, indices) -> list[dict]:
    """Per real case with a mask: its label vector, tissue-class volume fractions (4,) and per-class, per-contrast
    voxel mean and standard deviation (4, C, 2; NaN for a class the case lacks). Summaries only, never voxels."""
    cases = []
    for image, seg, has_mask, labels in real_batches(dataset, indices):
        if not has_mask:
            continue
        flat_seg, flat_img = seg.reshape(-1), image[0].reshape(image.shape[1], -1)
        stats = torch.full((4, image.shape[1], 2), float("nan"))
        for k in range(4):
            chosen = flat_seg == k
            if int(chosen.sum()) > 1:
                stats[k, :, 0], stats[k, :, 1] = flat_img[:, chosen].mean(1), flat_img[:, chosen].std(1).clamp_min(1e-3)
        lesion = torch.nonzero(seg.reshape(seg.shape[-3:]) > 0).float()
        # the lesion's centroid in [-1, 1] grid coordinates (D, H, W), NaN without one: where tumours sit
        centre = (lesion.mean(0) / torch.tensor([max(s - 1, 1) for s in seg.shape[-3:]]) * 2 - 1).numpy() \
            if len(lesion) else np.full(3, np.nan)
        cases.append({"labels": np.asarray(labels, np.int64),
                      "fractions": np.bincount(flat_seg.numpy(), minlength=4)[:4] / flat_seg.numel(),
                      "stats": stats, "centre": centre})
    return cases


@torch.no_grad()
def site_template(dataset, indices, reference: tuple[int, int, int], low: tuple[int, int, int],
                  min_group: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The anatomy the site's cases share, on the low-resolution grid ``low``: (C, d, h, w) the mean of their
    images and (d, h, w) bool the brain a synthetic lesion may take; None for fewer than ``min_group`` cases.

    A population template, as an atlas is: an average over all of ``indices`` (the condensation passes every case
    of the site, whatever the request). A mean over all cases is not enough by itself: preprocessing leaves the
    background at 0 and the case count is public, so where fewer than ``min_group`` patients have brain (the rim
    that one patient's head alone reaches) the mean is those patients' voxels over a known count. So the template
    is made once on the site's own full-resolution grid ``reference`` (each case resampled to it), where every
    voxel that fewer than ``min_group`` patients' brains (a nonzero voxel) cover is set to 0, and only then
    area-resampled to ``low``. Whatever grid a server asks for (its ``scale``), what it gets is an average of that
    one full-resolution population image: templates at two scales cannot be differenced into a rim voxel. (The
    kept region's edge is where the ``min_group``-th patient's head ends: a k-anonymous bound, not one patient's
    outline.)

    The brain returned is where most of the site's patients have brain (on the full grid; at ``low``, the cells
    it covers at least half of): lesions go where the typical head is, not into a rim a minority reaches."""
    need = max(1, int(min_group))
    reference = tuple(int(s) for s in reference)
    total, covered, n = None, None, 0
    for image, _, _, _ in real_batches(dataset, indices):
        image = image.float()
        inside = (image != 0).any(1, keepdim=True).float()
        if tuple(image.shape[-3:]) != reference:
            image = F.interpolate(image, size=reference, mode="trilinear", align_corners=False)
            inside = F.interpolate(inside, size=reference, mode="trilinear", align_corners=False)
        total = image[0] if total is None else total + image[0]
        covered = (inside[0, 0] >= 0.5).long() if covered is None else covered + (inside[0, 0] >= 0.5).long()
        n += 1
    if n < need:
        return None
    population = covered >= need
    typical = population & (2 * covered >= n)
    brain = F.interpolate(typical[None, None].float(), size=tuple(low), mode="area")[0, 0] >= 0.5
    return F.interpolate((total / n * population)[None], size=tuple(low), mode="area")[0], brain


def class_fractions(cases: list[dict], labels: np.ndarray, min_group: int) -> np.ndarray:
    """(n, 4) tissue-class fractions per synthetic volume: the mean over the group of real cases its labels pick
    (:func:`summary_groups`; e.g. no enhancing rim for a grade II label when that group's tumours have none); no
    lesion where the site has fewer than ``min_group`` masked cases (the volume then counts as unmasked), and no
    lesion class that fewer than ``min_group`` of the group's cases show (its share goes to background)."""
    groups = summary_groups(cases, min_group)
    rows = []
    for vector in labels:
        group = group_for(groups, vector)
        if not group:
            rows.append(np.array([1.0, 0, 0, 0]))
            continue
        stacked = np.array([c["fractions"] for c in group], float)
        row = stacked.mean(0)
        row[1:][(stacked[:, 1:] > 0).sum(0) < max(1, int(min_group))] = 0.0
        row[0] = 1.0 - row[1:].sum()
        rows.append(row)
    return np.asarray(rows)


def lesion_centres(cases: list[dict], labels: np.ndarray, min_group: int) -> np.ndarray:
    """(n, 3) the mean lesion centroid (grid coordinates in [-1, 1]) of the group of real cases each synthetic
    volume's labels pick (:func:`summary_groups`); NaN where no group of at least ``min_group`` cases has one."""
    groups = summary_groups(cases, min_group)
    rows = []
    for vector in labels:
        centres = np.array([c["centre"] for c in group_for(groups, vector) if "centre" in c], float).reshape(-1, 3)
        centres = centres[np.isfinite(centres).all(1)]
        rows.append(centres.mean(0) if len(centres) >= max(1, int(min_group)) else np.full(3, np.nan))
    return np.asarray(rows, float).reshape(-1, 3)


def synthetic_masks(low: tuple[int, int, int], fractions: np.ndarray, n: int, rng: np.random.Generator,
                     centres: np.ndarray | None = None, brain: np.ndarray | None = None) -> np.ndarray:
    """Ellipsoidal lesions: oedema shell, core, enhancing rim; ``fractions`` (4,) for all volumes or (n, 4) one row
    per volume (class statistics, never a patient's mask).

    ``centres`` (n, 3): where each lesion is centred (grid coordinates in [-1, 1]; a NaN row, or none: drawn in
    the middle of the grid), with a small random shift; ``brain`` (d, h, w) bool: the voxels a lesion may take
    (default all), so that a lesion lies inside the template's brain."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in low], indexing="ij")
    masks = np.zeros((n, *low), np.uint8)
    fractions = np.asarray(fractions, float)
    if fractions.shape not in ((4,), (n, 4)):
        raise ValueError(f"lesion fractions must have shape (4,) or ({n}, 4), not {fractions.shape}.")
    rows = np.broadcast_to(fractions, (n, 4))
    allowed = np.ones(low, bool) if brain is None or not np.asarray(brain).any() else np.asarray(brain, bool)
    for i in range(n):
        lesion = float(rows[i, 1:].sum())
        if lesion <= 0:
            continue
        known = centres is not None and np.isfinite(centres[i]).all()
        centre = (np.clip(centres[i] + rng.uniform(-0.15, 0.15, 3), -0.6, 0.6) if known
                  else rng.uniform(-0.3, 0.3, 3))
        r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
        r = np.where(allowed, r, np.inf)  # outside the brain last
        order = np.argsort(r, axis=None)
        flat = masks[i].reshape(-1)
        total = int(round(lesion * flat.size))
        # innermost voxels necrosis/core (1), then enhancing rim (3), then oedema (2)
        counts = (rows[i, 1:] / lesion * total).round().astype(int)
        ncr, ed, et = counts[0], counts[1], counts[2]
        flat[order[:ncr]] = 1
        flat[order[ncr:ncr + et]] = 3
        flat[order[ncr + et:ncr + et + ed]] = 2
    return masks


def init_synthetic(dataset, init: str, masks: torch.Tensor, low: tuple[int, int, int], rng: np.random.Generator,
                   generator: torch.Generator, labels: np.ndarray | None = None,
                   cases: list[dict] | None = None, *, min_group: int,
                   template: torch.Tensor | None = None) -> torch.Tensor:
    """Initial low-resolution synthetic images (n, C, d, h, w) float32.

    Args:
        dataset: the site's real cases (read only for ``class_stats`` statistics and ``real_unsafe``).
        init: ``"noise"``, ``"class_stats"`` or ``"real_unsafe"`` (see the module docstring).
        masks: (n, d, h, w) synthetic segmentation masks the ``class_stats`` initialisation paints.
        low: the low-resolution grid (d, h, w).
        rng, generator: NumPy / torch random generators.
        labels: (n, 4) the synthetic volumes' label vectors; ``class_stats`` paints each volume with the mean
            statistics of the group of real cases its labels pick (:func:`summary_groups`, :func:`group_for`), so a
            volume labelled IDH-mutant starts with the intensities of the site's IDH-mutant tumours. Without labels
            every volume gets the average of all ``cases``.
        cases: :func:`case_statistics` of the real cases to draw statistics from (default: every masked case of
            ``dataset``).
        min_group: fewest cases any statistic may summarise (the site's ``SitePolicy.min_group``): groups have at
            least this many cases, a tissue class fewer of the group's cases show is painted standard normal, and
            a site with fewer masked cases than this paints standard normal throughout (with ``template``: the
            template plus a little noise).
        template: (C, d, h, w) the site's mean anatomy (:func:`site_template`); ``class_stats`` paints the lesion
            onto it (background voxels: the template plus a little noise) instead of onto a uniform background of
            the non-tumour statistics, so that the server sees tumours inside brains.
    """
    n, channels = int(masks.shape[0]), int(dataset[0]["image"].shape[0])
    all_indices = np.arange(len(dataset))
    if init == "real_unsafe":
        picks = rng.choice(all_indices, size=n, replace=len(all_indices) < n)
        return torch.cat([F.interpolate(dataset[int(i)]["image"][None], size=low, mode="area") for i in picks]).float()
    if init == "class_stats":
        if cases is None:
            cases = case_statistics(dataset, all_indices)
        prior = torch.zeros(4, channels, 2)
        prior[:, :, 1] = 1.0  # a class fewer than min_group cases of the group show: standard normal, as "noise"
        groups = summary_groups(cases, min_group) if labels is not None else [cases] * (len(cases) >= min_group)
        out = []
        for i in range(n):
            group = group_for(groups, labels[i]) if labels is not None else (groups[0] if groups else [])
            stats = _mean_stats(group, channels, min_group)
            stats = torch.where(torch.isnan(stats), prior, stats)
            mean = stats[masks[i].long(), :, 0].permute(3, 0, 1, 2)
            std = stats[masks[i].long(), :, 1].permute(3, 0, 1, 2)
            if template is not None:  # non-tumour voxels: the site's shared anatomy, not one uniform value
                background = (masks[i] == 0)[None]
                mean = torch.where(background, template.float(), mean)
                std = torch.where(background, torch.full_like(std, 0.2), std)
            out.append(mean + 0.5 * std * torch.randn(mean.shape, generator=generator))
        return torch.stack(out).float()
    return torch.randn((n, channels, *low), generator=generator)


def _mean_stats(cases: list[dict], channels: int, min_group: int) -> torch.Tensor:
    """(4, C, 2) mean over ``cases`` of their per-class statistics; NaN for a class fewer than ``min_group`` of
    them show (so that no class's statistics are those of fewer than ``min_group`` patients)."""
    stats = torch.full((4, channels, 2), float("nan"))
    if cases:
        stacked = torch.stack([c["stats"] for c in cases])
        present = ~torch.isnan(stacked)
        summed = torch.where(present, stacked, torch.zeros(())).sum(0)
        count = present.sum(0)
        stats = torch.where(count >= max(1, min_group), summed / count.clamp_min(1), stats)
    return stats
