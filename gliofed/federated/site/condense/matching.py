"""Matching: the distribution-matching loss that moves the synthetic volumes (compare FedDM, CVPR 2023, and FedAF,
CVPR 2024).

Under the global model and ``models - 1`` randomly perturbed copies (:func:`perturbed`), the synthetic and real
class-wise means are matched for every marker and class they share, at three levels of the classification branch
(pooled bottleneck features, the MLP's hidden features and that marker's logits), and, for segmentation, the
per-class means of the last decoder features over the voxels of each segmentation class. Real targets are computed
once per model copy over whole blocks of real cases (:func:`real_targets`), only where at least ``min_group`` cases
show the class.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from gliofed.federated.site.condense._cases import real_batches
from gliofed.vocab import MARKER_CLASSES, MARKERS

__all__ = ["real_targets", "matching_loss", "perturbed"]


#: levels of the network whose class-wise means are matched (see :func:`matching_loss`)
_LEVELS = ("bottleneck", "hidden", "logits")


def perturbed(model: torch.nn.Module, relative: float, generator: torch.Generator) -> torch.nn.Module:
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            if relative > 0:
                noise = torch.randn(p.shape, generator=generator)
                p.add_(noise * relative * (p.detach().std() if p.numel() > 1 else p.detach().abs() + 1e-8))
            p.requires_grad_(False)
    return twin.eval()


def _levels(net: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
    """Features of ``images`` at every matched level: bottleneck, hidden, per-marker logits, decoder."""
    out = net(images, return_features=True)
    hidden = net.mlp(out["bottleneck"])  # the classification branch's hidden features (eval: no dropout)
    return {"bottleneck": out["bottleneck"], "hidden": hidden, "logits": {m: out[m].float() for m in MARKERS},
            "decoder": out["decoder"]}


def _class_sums(levels: dict, labels: torch.Tensor) -> dict[tuple[str, int, int], tuple[torch.Tensor, int]]:
    """{(level, marker index, class): (sum of that level's features over cases of the class, count)}."""
    sums = {}
    for j, marker in enumerate(MARKERS):
        for c in range(len(MARKER_CLASSES[marker])):
            chosen = labels[:, j] == c
            count = int(chosen.sum())
            if count:
                sums[("bottleneck", j, c)] = (levels["bottleneck"][chosen].sum(0), count)
                sums[("hidden", j, c)] = (levels["hidden"][chosen].sum(0), count)
                sums[("logits", j, c)] = (levels["logits"][marker][chosen].sum(0), count)
    return sums


def _voxel_class_sums(decoder: torch.Tensor, seg: torch.Tensor) -> dict[int, tuple[torch.Tensor, int]]:
    """(N, F, D, H, W) decoder features, (N, 1, D, H, W) classes -> {class: (feature sum over its voxels, count)}."""
    flat = decoder.permute(1, 0, 2, 3, 4).reshape(decoder.shape[1], -1)
    classes = seg.reshape(-1)
    return {int(k): (flat[:, classes == k].sum(1), int((classes == k).sum())) for k in torch.unique(classes).tolist()}


@torch.no_grad()
def real_targets(net: torch.nn.Module, dataset, indices, min_group: int) -> dict:
    """Class-wise means of the real cases ``indices`` under ``net`` (eval mode): ``{"class": {(level, marker
    index, class): mean}, "voxel": {segmentation class: mean decoder feature}}``.

    A voxel target is the mean feature over all of that class's voxels in the masked cases (pooled, like the
    synthetic side of :func:`matching_loss`; cases without a mask add nothing). A target that fewer than
    ``min_group`` cases back (for a voxel target: masked cases showing the class) is left out: it would be one
    patient's features."""
    class_sums: dict = {}
    voxel_sums: dict = {}
    for image, seg, has_mask, labels in real_batches(dataset, indices):
        levels = _levels(net, image)
        for key, (total, count) in _class_sums(levels, labels[None]).items():
            old = class_sums.get(key, (0.0, 0))
            class_sums[key] = (old[0] + total, old[1] + count)
        if has_mask:
            for key, (total, count) in _voxel_class_sums(levels["decoder"], seg[None]).items():
                if count:
                    old = voxel_sums.get(key, (0.0, 0, 0))
                    voxel_sums[key] = (old[0] + total, old[1] + count, old[2] + 1)
    least = max(1, int(min_group))
    return {"class": {k: s / n for k, (s, n) in class_sums.items() if n >= least},
            "voxel": {k: s / n for k, (s, n, cases) in voxel_sums.items() if cases >= least}}


def matching_loss(net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                  shape, targets: dict) -> torch.Tensor:
    """Distribution-matching loss of the synthetic set under ``net`` against real ``targets``
    (:func:`real_targets`).

    Sum of squared distances between synthetic and real class means, for every (level, marker, class)
    present in both (levels: pooled bottleneck, MLP hidden, that marker's logits), plus, for every
    segmentation class present in both, the squared distance of the mean last-decoder feature over that
    class's voxels.

    Args:
        net: model in eval mode (its parameters need no gradient).
        images: (n, C, d, h, w) low-resolution synthetic images (requires grad).
        masks: (n, 1, D, H, W) synthetic masks at full resolution (int64).
        labels: (n, 4) synthetic label vectors.
        shape: full-resolution (D, H, W).
        targets: real class means under the same ``net``.

    Returns:
        scalar loss (zero, still connected to ``images``, when nothing is shared).
    """
    full = F.interpolate(images.float(), size=tuple(shape), mode="trilinear", align_corners=False)
    levels = _levels(net, full)
    loss = images.sum() * 0.0
    for key, (total, count) in _class_sums(levels, labels).items():
        if key in targets["class"]:
            loss = loss + ((total / count - targets["class"][key]) ** 2).sum()
    if bool((masks > 0).any()):
        for k, (total, count) in _voxel_class_sums(levels["decoder"], masks).items():
            if k in targets["voxel"] and count:
                loss = loss + ((total / count - targets["voxel"][k]) ** 2).sum()
    return loss
