"""Masked multi-task loss: Dice + CE on cases with a mask (over the classes, or Dice + BCE over the nested regions),
cross-entropy per marker ignoring unknown labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from torch import nn

from gliofed.segmentation import SEG_OUTPUTS, region_targets
from gliofed.vocab import MARKERS

__all__ = ["MultiTaskLoss"]


class MultiTaskLoss(nn.Module):
    """Masked multi-task loss of the seed study.

    total = w_seg * seg loss(cases with a mask) + sum_m w_m * CE_m(marker m | cases with a known label).

    The seg loss of a ``"classes"`` head is MONAI's DiceCE over the four classes (softmax, background included); of a
    ``"regions"`` head, Dice + binary cross-entropy of a sigmoid per region WT, TC, ET (as BraTS methods train:
    the nested regions directly).

    A task with no usable case in the batch contributes exactly zero (never NaN) and keeps the graph
    connected so that every strategy can call ``backward`` unconditionally.

    Args:
        task_weights: weight per task, keys ``seg`` and the markers (default 1.0 each).
        class_weights: optional per-marker class weights for the CE (imbalance), e.g. ``{"idh": [1, 5]}``.
        focal_gamma: if > 0, MONAI's focal loss replaces the marker CE (default 0: plain CE).
        seg_output: the segmentation head's form, ``"classes"`` (default) or ``"regions"``
            (:data:`gliofed.segmentation.SEG_OUTPUTS`).

    Returns (forward):
        (total loss scalar, dict of detached per-task losses).

    >>> loss = MultiTaskLoss(task_weights={"mgmt": 0.5})
    """

    def __init__(self, task_weights: Mapping[str, float] | None = None,
                 class_weights: Mapping[str, Sequence[float]] | None = None, focal_gamma: float = 0.0,
                 seg_output: str = "classes") -> None:
        super().__init__()
        if seg_output not in SEG_OUTPUTS:
            raise ValueError(f"seg_output {seg_output!r} is not one of {', '.join(SEG_OUTPUTS)}.")
        self.seg_output = seg_output
        self.task_weights = {"seg": 1.0, **{m: 1.0 for m in MARKERS}, **dict(task_weights or {})}
        self.class_weights = {m: torch.tensor(w, dtype=torch.float32) for m, w in (class_weights or {}).items()}
        self.focal_gamma = focal_gamma
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=True)
        self.region_dice = DiceLoss(sigmoid=True, include_background=True)

    def seg_loss(self, logits: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """The segmentation term of cases with a mask: logits (B, K, D, H, W), seg (B, 1, D, H, W) classes 0..3."""
        if self.seg_output == "regions":
            target = region_targets(seg)
            return self.region_dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
        return self.dice_ce(logits, seg)

    def marker_loss(self, marker: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of one marker over the rows whose label is known (>= 0); zero if there are none."""
        known = target >= 0
        if not bool(known.any()):
            return logits.sum() * 0.0
        logits, target = logits[known].float(), target[known]
        weight = self.class_weights.get(marker)
        weight = weight.to(logits.device) if weight is not None else None
        if self.focal_gamma > 0:
            focal = FocalLoss(gamma=self.focal_gamma, weight=weight, use_softmax=True, to_onehot_y=True)
            return focal(logits, target[:, None])
        return F.cross_entropy(logits, target, weight=weight)

    def forward(self, outputs: Mapping[str, torch.Tensor], seg: torch.Tensor, has_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Args: model outputs; seg (B, 1, D, H, W) class indices; has_mask (B,) bool; labels (B, 4), -1 unknown."""
        parts: dict[str, torch.Tensor] = {}
        if bool(has_mask.any()):
            parts["seg"] = self.seg_loss(outputs["seg"][has_mask].float(), seg[has_mask])
        else:
            parts["seg"] = outputs["seg"].sum() * 0.0
        for i, marker in enumerate(MARKERS):
            parts[marker] = self.marker_loss(marker, outputs[marker], labels[:, i])
        total = sum(self.task_weights[name] * value for name, value in parts.items())
        return total, {name: float(value.detach()) for name, value in parts.items()}
