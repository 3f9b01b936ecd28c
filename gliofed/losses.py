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
        """Loss of one marker over the rows whose label is known (>= 0); zero if there are none.

        ``target`` may live on the host while ``logits`` are on a GPU: the rows are then chosen on the host, without
        waiting for the device."""
        host = target.cpu()
        known = host >= 0
        if not bool(known.any()):
            return logits.sum() * 0.0
        rows = None if bool(known.all()) else _rows(known, logits.device)
        logits = (logits if rows is None else logits.index_select(0, rows)).float()
        target = _on(target if rows is None else host[known], logits.device)
        weight = self.class_weights.get(marker)
        weight = weight.to(logits.device) if weight is not None else None
        if self.focal_gamma > 0:
            focal = FocalLoss(gamma=self.focal_gamma, weight=weight, use_softmax=True, to_onehot_y=True)
            return focal(logits, target[:, None])
        return F.cross_entropy(logits, target, weight=weight)

    def terms(self, outputs: Mapping[str, torch.Tensor], seg: torch.Tensor, has_mask: torch.Tensor,
              labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and each task's term, as tensors (nothing waits for the device).

        Args: model outputs; seg (B, 1, D, H, W) class indices; has_mask (B,) bool; labels (B, 4), -1 unknown.
        ``has_mask`` and ``labels`` may stay on the host (the training loop keeps them there).
        """
        parts: dict[str, torch.Tensor] = {}
        masked = has_mask.cpu().bool()
        if bool(masked.all()):
            parts["seg"] = self.seg_loss(outputs["seg"].float(), seg)
        elif bool(masked.any()):
            rows = _rows(masked, seg.device)
            parts["seg"] = self.seg_loss(outputs["seg"].index_select(0, rows).float(), seg.index_select(0, rows))
        else:
            parts["seg"] = outputs["seg"].sum() * 0.0
        for i, marker in enumerate(MARKERS):
            parts[marker] = self.marker_loss(marker, outputs[marker], labels[:, i])
        total = sum(self.task_weights[name] * value for name, value in parts.items())
        return total, parts

    def forward(self, outputs: Mapping[str, torch.Tensor], seg: torch.Tensor, has_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Args: model outputs; seg (B, 1, D, H, W) class indices; has_mask (B,) bool; labels (B, 4), -1 unknown."""
        total, parts = self.terms(outputs, seg, has_mask, labels)
        return total, {name: float(value.detach()) for name, value in parts.items()}


def _on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; from the host through pinned memory, so the copy does not wait for the device."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _rows(chosen: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Indices of the True entries of the host mask ``chosen``, on ``device``."""
    return _on(chosen.nonzero().reshape(-1), device)
