"""Distillation federation, server side (the seed study's method; compare FedAF, CVPR 2024, FedDM, CVPR 2023).

Each round the sites return a condensed synthetic set plus soft labels (:mod:`gliofed.federated.site.condense`,
which runs inside each site). The server trains the global model on the union of synthetic sets with

    loss = CE(markers | known synthetic labels) + seg loss (synthetic masks)
           + kl_weight * sum over sites, markers, classes of  symKL( p_server(c), q_site(c) )

where ``p_server(c)`` is the server model's class-averaged tempered softmax over that site's synthetic
volumes of class c and ``q_site(c)`` the site's uploaded soft label for class c. ``p_server`` is computed
from the live logits, so the KL term carries gradients into the model (:func:`symmetric_kl` is tested for it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gliofed.data.manifest import MARKER_CLASSES, MARKERS
from gliofed.errors import ConfigError
from gliofed.federated.payload import Payload
from gliofed.federated.strategies.base import Strategy
from gliofed.losses import MultiTaskLoss

__all__ = ["DistillSettings", "DistillFederation", "symmetric_kl", "distillation_kl", "upsample_synthetic"]


@dataclass
class DistillSettings:
    """Knobs of distillation federation (site and server side).

    Attributes:
        n_synthetic: synthetic volumes per site (default 3).
        scale: down-sampling factor of the stored synthetic volumes in every axis (default 4).
        steps: condensation optimisation steps per round (default 30).
        lr: condensation learning rate on synthetic voxels (default 0.05, Adam).
        real_batch: real cases sampled per condensation step (default 6).
        perturb: relative std of the weight noise of the perturbed model copies (default 0.02).
        init: ``"class_stats"`` (default), ``"noise"``, or ``"real_unsafe"`` (teaching only; flagged by the audit).
        temperature: tau of the soft labels and of the server's KL term (default 2.0).
        kl_weight: lambda of the server's symmetric KL term (default 1.0).
        server_epochs: server passes over the union of synthetic sets per round (default 10).
        server_lr: server learning rate (default 1e-3, AdamW).
    """

    n_synthetic: int = 3
    scale: int = 4
    steps: int = 30
    lr: float = 0.05
    real_batch: int = 6
    perturb: float = 0.02
    init: str = "class_stats"
    temperature: float = 2.0
    kl_weight: float = 1.0
    server_epochs: int = 10
    server_lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.init not in ("noise", "class_stats", "real_unsafe"):
            raise ConfigError(f"distillation init {self.init!r} is not 'noise', 'class_stats' or 'real_unsafe'.")
        if self.n_synthetic < 1 or self.scale < 1 or self.steps < 0:
            raise ConfigError("n_synthetic and scale must be >= 1 and steps >= 0.")


def upsample_synthetic(images: torch.Tensor, masks: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution synthetic volumes (N, C, d, h, w) and masks (N, d, h, w) -> full ``shape``:
    trilinear for images, nearest for masks (returned as (N, 1, D, H, W) int64)."""
    full = F.interpolate(images.float(), size=tuple(shape), mode="trilinear", align_corners=False)
    labels = F.interpolate(masks[:, None].float(), size=tuple(shape), mode="nearest").long()
    return full, labels


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """KL(p || q) + KL(q || p) for probability vectors (last dimension), summed over leading dimensions."""
    p, q = p.clamp_min(eps), q.clamp_min(eps)
    return ((p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1)).sum()


def distillation_kl(outputs: dict[str, torch.Tensor], labels: torch.Tensor, soft: dict[str, torch.Tensor],
                    temperature: float) -> torch.Tensor:
    """Sum over markers and classes present among ``labels`` of symKL(class-averaged tempered softmax of
    ``outputs``, the soft label of that class)."""
    total = outputs["seg"].sum() * 0.0
    for j, marker in enumerate(MARKERS):
        probs = torch.softmax(outputs[marker].float() / temperature, dim=1)
        for c in range(len(MARKER_CLASSES[marker])):
            chosen = labels[:, j] == c
            if bool(chosen.any()) and float(soft[marker][c].sum()) > 0:
                total = total + symmetric_kl(probs[chosen].mean(0), soft[marker][c])
    return total


class DistillFederation(Strategy):
    """Server of distillation federation.

    Args:
        settings: :class:`DistillSettings` (or a dict of its fields).
        seed: seeds the server's data order.
    """

    name = "distill"
    task = "distill"

    def __init__(self, settings: DistillSettings | dict | None = None, seed: int = 0) -> None:
        super().__init__(local_epochs=0)
        self.settings = settings if isinstance(settings, DistillSettings) else DistillSettings(**(settings or {}))
        self.seed = seed

    def site_settings(self, rnd: int) -> dict:
        return {"distill": dataclasses.asdict(self.settings)}

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        device = next(model.parameters()).device
        sets = []
        for site, payload in sorted(replies.items()):
            images, masks = upsample_synthetic(torch.from_numpy(payload.arrays["syn_images"].astype(np.float32)),
                                               torch.from_numpy(payload.arrays["syn_masks"].astype(np.int64)),
                                               payload.meta["shape"])
            soft = {m: torch.from_numpy(payload.arrays[f"soft:{m}"]).to(device) for m in MARKERS}
            labels = torch.from_numpy(payload.arrays["syn_labels"].astype(np.int64))
            sets.append((site, images.to(device), masks.to(device), labels.to(device), soft))
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.settings.server_lr)
        loss_fn = MultiTaskLoss()
        rng = np.random.default_rng([self.seed, rnd])
        model.train()
        losses = []
        for _ in range(self.settings.server_epochs):
            for k in rng.permutation(len(sets)):  # one site's synthetic set per step: shapes differ across sites
                _, images, masks, labels, soft = sets[k]
                outputs = model(images)
                has_mask = masks.flatten(1).amax(1) > 0
                task_loss, _ = loss_fn(outputs, masks, has_mask, labels)
                kl = distillation_kl(outputs, labels, soft, self.settings.temperature)
                loss = task_loss + self.settings.kl_weight * kl
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        return {"server_loss": float(np.mean(losses)) if losses else float("nan")}
