"""Grad-CAM for every head of the multi-task network (Captum's ``LayerGradCam``) and a localisation score.

Marker heads (``idh``, ``codeletion``, ``mgmt``, ``grade``) are explained for one class per case (default:
the predicted class). The segmentation output is explained the way Captum's segmentation tutorial does
it: the class logits are summed over the voxels predicted as that class, so the map answers "what made
the network call this region tumour". Maps are taken at a layer (default: the bottleneck ``down_3`` for
the marker heads, the deepest layer they depend on; the last decoder stage ``upcat_1`` for the segmentation
output, whose bottleneck map is all zero after the ReLU on trained models: measured on the workshop preset),
ReLU-ed, upsampled trilinearly to the input and scaled to [0, 1] per case.

The localisation score measures the seed's claim that "high activation coincides with the segmented
region": the share of the top-k % Grad-CAM voxels (inside the brain) that fall in the whole-tumour mask,
next to the share expected by chance (the tumour's share of the brain), and the pointing game (is the
hottest voxel inside the tumour?).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn
from tqdm.auto import tqdm

from gliofed.errors import ConfigError

__all__ = ["SEG_TARGET", "DEFAULT_LAYER", "DEFAULT_SEG_LAYER", "default_layer", "grad_cam", "CaseExplanation",
           "explain_case", "localisation_score", "explain_dataset", "summarise_localisation"]

#: name of the segmentation target (whole tumour: classes 1, 2, 3 summed over the predicted tumour)
SEG_TARGET = "seg"
#: default layer for the marker heads: the bottleneck, the deepest layer they depend on
DEFAULT_LAYER = "down_3"
#: default layer for the segmentation output: the last decoder stage (the bottleneck's map is empty after the ReLU)
DEFAULT_SEG_LAYER = "upcat_1"


def default_layer(target: str) -> str:
    """The layer Grad-CAM uses for ``target`` when none is given."""
    return DEFAULT_SEG_LAYER if target == SEG_TARGET else DEFAULT_LAYER


def _resolve_layer(model: nn.Module, layer: str | nn.Module | None, target: str) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    name = layer or default_layer(target)
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = ", ".join(n for n, _ in model.named_children())
        raise ConfigError(f"layer {name!r} is not part of the model; top-level layers are: {names}.") from None


class _HeadOutput(nn.Module):
    """Wraps the multi-task model so Captum sees one tensor: the logits of one marker head, or for the
    segmentation target the tumour-class logits summed over the predicted tumour (B,)."""

    def __init__(self, model: nn.Module, target: str, tumour_classes: Sequence[int]) -> None:
        super().__init__()
        self.model, self.target, self.tumour_classes = model, target, list(tumour_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.target != SEG_TARGET:
            return out[self.target]
        logits = out["seg"]
        if getattr(self.model, "config", {}).get("seg_output") == "regions":  # WT's logit over the predicted WT
            return (logits[:, 0] * (logits[:, 0] > 0)).flatten(1).sum(1)
        predicted = logits.argmax(1, keepdim=True)
        selected = torch.zeros_like(logits).scatter_(1, predicted, 1.0)  # one-hot of the predicted class
        selected[:, [c for c in range(logits.shape[1]) if c not in self.tumour_classes]] = 0
        return (logits * selected).flatten(1).sum(1)


def grad_cam(model: nn.Module, images: torch.Tensor, target: str = "idh",
             target_class: int | Sequence[int] | None = None, layer: str | nn.Module | None = None,
             tumour_classes: Sequence[int] = (1, 2, 3),
             normalise: bool = True) -> torch.Tensor:
    """Grad-CAM of one head for a batch, upsampled to the input.

    Args:
        model: a :class:`~gliofed.model.MultiTaskUNet` (or any model returning the same dict of logits).
        images: (B, C, D, H, W) on the model's device.
        target: a marker head (``idh``, ``codeletion``, ``mgmt``, ``grade``) or ``"seg"``.
        target_class: class explained per case for a marker head (int or one per case); default the
            predicted class. Ignored for ``"seg"``.
        layer: module or dotted name (default :func:`default_layer`: ``"down_3"`` for marker heads,
            ``"upcat_1"`` for ``"seg"``).
        tumour_classes: segmentation classes that make the tumour for ``"seg"`` (default 1, 2, 3 = WT).
        normalise: scale each case's map to [0, 1] (an all-zero map stays zero).

    Returns:
        float tensor (B, 1, D, H, W), non-negative (ReLU-ed as in Grad-CAM).
    """
    if images.ndim != 5:
        raise ConfigError(f"grad_cam expects images of shape (B, C, D, H, W), got {tuple(images.shape)}.")
    was_training = model.training
    model.eval()
    try:
        wrapper = _HeadOutput(model, target, tumour_classes)
        with torch.enable_grad():
            if target == SEG_TARGET:
                class_index = None
            else:
                if target_class is None:
                    with torch.no_grad():
                        target_class = wrapper(images).argmax(1).tolist()
                class_index = [int(target_class)] * len(images) if isinstance(target_class, int) else list(target_class)
            try:
                cam = LayerGradCam(wrapper, _resolve_layer(model, layer, target)).attribute(
                    images, target=class_index, relu_attributions=True)
            except RuntimeError as error:
                if "not have been used in the graph" not in str(error):
                    raise
                raise ConfigError(f"layer {layer!r} does not feed the {target!r} output, so it has no Grad-CAM for it; "
                                  f"use an encoder layer such as {DEFAULT_LAYER!r}.") from None
    finally:
        model.train(was_training)
    cam = LayerAttribution.interpolate(cam.detach().float(), tuple(images.shape[2:]), interpolate_mode="trilinear")
    cam = cam.clamp_min(0)
    if normalise:
        peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1, 1)
        cam = cam / peak
    return cam


@dataclass
class CaseExplanation:
    """The network's outputs on one case and a Grad-CAM map per target (see :func:`explain_case`).

    Attributes:
        outputs: head -> logits of the case (batch of one), as the model returns them.
        cams: target -> (D, H, W) float map in [0, 1].
        explained: target -> the class its map explains (the predicted one); ``None`` for ``"seg"``.
    """

    outputs: dict[str, torch.Tensor]
    cams: dict[str, np.ndarray]
    explained: dict[str, int | None]


def explain_case(model: nn.Module, image: torch.Tensor, targets: Sequence[str] = ("seg", "idh", "codeletion", "mgmt",
                                                                                   "grade"),
                 layer: str | nn.Module | None = None) -> CaseExplanation:
    """Run ``model`` on one case and Grad-CAM each target for the class it predicts.

    The one place that turns a case into per-head maps: :func:`explain_dataset` scores them, the slice viewer
    (:func:`gliofed.viz.viewer.case_views`) draws them.

    Args:
        model: the multi-task network.
        image: (1, C, D, H, W) on the model's device.
        targets: marker heads and/or ``"seg"``.
        layer: Grad-CAM layer (default :func:`default_layer` per target).

    Returns:
        :class:`CaseExplanation`.
    """
    with torch.no_grad():
        outputs = model.eval()(image)
    cams, explained = {}, {}
    for target in targets:
        explained[target] = None if target == SEG_TARGET else int(outputs[target].argmax(1)[0])
        cams[target] = grad_cam(model, image, target, explained[target], layer=layer)[0, 0].cpu().numpy()
    return CaseExplanation(outputs=outputs, cams=cams, explained=explained)


def localisation_score(cam: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor,
                       brain: np.ndarray | torch.Tensor | None = None, top_percent: float = 5.0) -> dict[str, float]:
    """How well one Grad-CAM map points at the tumour.

    Args:
        cam: (D, H, W) map.
        mask: (D, H, W) whole-tumour mask (bool or class map; > 0 is tumour).
        brain: (D, H, W) voxels to rank (default: all).
        top_percent: size of the hottest set, in % of the brain voxels.

    Returns:
        ``top_share``: share of the top-k % voxels inside the tumour; ``chance``: the tumour's share of the
        brain (what a random map scores); ``pointing_hit``: 1.0 when the hottest voxel is inside the tumour;
        ``empty``: the map is zero everywhere (Grad-CAM's ReLU removed it all), in which case ``top_share`` and
        ``pointing_hit`` are NaN rather than an arbitrary ranking of zeros.
    """
    cam, mask = np.asarray(cam, dtype=np.float64), np.asarray(mask) > 0
    if cam.shape != mask.shape:
        raise ConfigError(f"Grad-CAM map {cam.shape} and mask {mask.shape} differ in shape.")
    region = np.ones_like(mask) if brain is None else np.asarray(brain).astype(bool)
    values, inside = cam[region], mask[region]
    if not np.any(values > 0):
        return {"top_share": float("nan"), "chance": float(inside.mean()), "pointing_hit": float("nan"), "empty": 1.0}
    k = max(1, int(round(values.size * top_percent / 100)))
    top = np.argpartition(-values, k - 1)[:k]
    return {"top_share": float(inside[top].mean()), "chance": float(inside.mean()),
            "pointing_hit": float(inside[int(np.argmax(values))]), "empty": 0.0}


def explain_dataset(model: nn.Module, dataset, targets: Sequence[str] = ("seg", "idh", "codeletion", "mgmt", "grade"),
                    layer: str | nn.Module | None = None, top_percent: float = 5.0, device: str | torch.device = "cpu",
                    progress: bool = True) -> pd.DataFrame:
    """Grad-CAM localisation over every masked case of ``dataset`` (a :class:`~gliofed.data.CaseDataset`).

    Cases without a tumour mask cannot be scored and are skipped (they are counted in the summary's ``n``
    only when scored). Each case is processed on its own because cases differ in depth.

    Returns:
        one row per case and target: ``subject``, ``site``, ``target``, ``explained_class``, ``top_share``,
        ``chance``, ``pointing_hit``.
    """
    from gliofed.engine import resolve_device

    device = resolve_device(device) if isinstance(device, str) else torch.device(device)  # "auto" too
    model = model.to(device)
    rows = []
    for i in tqdm(range(len(dataset)), desc="Grad-CAM", leave=False, disable=not progress):
        sample = dataset[i]
        if not sample["has_mask"]:
            continue
        image = torch.as_tensor(sample["image"])[None].to(device)
        mask = np.asarray(sample["seg"])[0] > 0
        brain = (image[0].abs().sum(0) > 0).cpu().numpy()
        explanation = explain_case(model, image, targets, layer=layer)
        for target in targets:
            rows.append({"subject": sample["subject"], "site": sample["site"], "target": target,
                         "explained_class": explanation.explained[target],
                         **localisation_score(explanation.cams[target], mask, brain, top_percent)})
    return pd.DataFrame(rows, columns=["subject", "site", "target", "explained_class", "top_share", "chance",
                                       "pointing_hit", "empty"])


def summarise_localisation(scores: pd.DataFrame) -> pd.DataFrame:
    """Per target: cases, empty maps, mean top-k share and pointing-game hit rate over the non-empty maps, the
    mean chance share, and lift = top-k share / chance."""
    summary = scores.groupby("target", sort=False).agg(n=("subject", "count"), empty_maps=("empty", "sum"),
                                                       top_share=("top_share", "mean"), chance=("chance", "mean"),
                                                       pointing_game=("pointing_hit", "mean"))
    summary["empty_maps"] = summary["empty_maps"].astype(int)
    summary["lift"] = summary["top_share"] / summary["chance"].where(summary["chance"] > 0)
    return summary[["n", "empty_maps", "top_share", "chance", "lift", "pointing_game"]]
