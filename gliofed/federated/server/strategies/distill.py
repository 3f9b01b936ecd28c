"""Distillation federation, server side (the seed study's method; compare FedAF, CVPR 2024, FedDM, CVPR 2023).

Each round the sites return a condensed synthetic set, soft labels and the BatchNorm statistics of their real data
(``gliofed.federated.site.condense``, which runs inside each site). The server sets the model's BatchNorm statistics
to the case-weighted mean of the sites' and keeps them frozen while it trains (synthetic volumes are upsampled
from a low resolution, so their batch statistics differ from real scans'), then trains the global model on this
round's synthetic sets, each step paired with one set kept from the last ``memory_rounds`` rounds (so that it keeps
what earlier rounds taught), with

    loss = CE(markers | known synthetic labels) + seg loss (synthetic masks)
           + kl_weight * sum over sites, markers, classes of  symKL( p_server(c), q_site(c) )

where ``p_server(c)`` is the server model's class-averaged tempered softmax over that site's synthetic
volumes of class c and ``q_site(c)`` the site's uploaded soft label for class c (this round's sets only: earlier
soft labels describe an earlier model). ``p_server`` is computed
from the live logits, so the KL term carries gradients into the model (:func:`symmetric_kl` is tested for it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from gliofed.dp import DPSettings
from gliofed.federated.protocol import DistillSettings, Payload
from gliofed.federated.protocol.synthetic import upsample_synthetic
from gliofed.federated.server.strategies.base import Strategy
from gliofed.losses import MultiTaskLoss
from gliofed.vocab import MARKER_CLASSES, MARKERS

__all__ = ["DistillSettings", "DistillFederation", "symmetric_kl", "distillation_kl"]


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
        dp: the differential-privacy dial sent to every site (:class:`~gliofed.dp.DPSettings` or its dict; default
            off): ``"gaussian"`` releases every summary of the site's cases through the Gaussian mechanism with
            per-case clipping. The round's info records each site's epsilon.
    """

    name = "distill"
    task = "distill"

    def __init__(self, settings: DistillSettings | dict | None = None, seed: int = 0,
                 dp: DPSettings | dict | None = None) -> None:
        super().__init__(local_epochs=0)
        self.dp = dp if isinstance(dp, DPSettings) else DPSettings.from_dict(dp)
        self.settings = settings if isinstance(settings, DistillSettings) else DistillSettings(**(settings or {}))
        self.seed = seed
        #: (round, site, payload) of the synthetic sets kept from earlier rounds
        self.memory: list[tuple[int, str, Payload]] = []

    def site_settings(self, rnd: int) -> dict:
        settings = {"distill": dataclasses.asdict(self.settings)}
        if self.dp.enabled:  # absent when off: a run without DP asks exactly what it asked before
            settings["dp"] = self.dp.to_dict()
        return settings

    def _load_bn(self, model: nn.Module, replies: dict[str, Payload]) -> None:
        """Set the model's BatchNorm statistics to the case-weighted mean of the sites' real statistics."""
        keys = sorted({k for p in replies.values() for k in p.arrays if k.startswith("bn:")})
        if not keys:
            return
        state = model.state_dict()
        for key in keys:
            have = [(p.arrays[key].astype(np.float64), float(p.meta["n_cases"])) for p in replies.values()
                    if key in p.arrays]
            total = sum(w for _, w in have)
            name = key[3:]
            if name in state and total > 0:
                mean = sum(a * (w / total) for a, w in have)
                state[name].copy_(torch.from_numpy(mean).to(state[name].dtype))

    @staticmethod
    def _unpack(payload: Payload, device) -> tuple:
        images, masks = upsample_synthetic(torch.from_numpy(payload.arrays["syn_images"].astype(np.float32)),
                                           torch.from_numpy(payload.arrays["syn_masks"].astype(np.int64)),
                                           payload.meta["shape"])
        soft = {m: torch.from_numpy(payload.arrays[f"soft:{m}"]).to(device) for m in MARKERS}
        labels = torch.from_numpy(payload.arrays["syn_labels"].astype(np.int64))
        return images.to(device), masks.to(device), labels.to(device), soft

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        device = next(model.parameters()).device
        if self.settings.freeze_bn:
            self._load_bn(model, replies)
        current = [self._unpack(payload, device) for _, payload in sorted(replies.items())]
        earlier = [self._unpack(payload, device) for _, _, payload in self.memory]
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.settings.server_lr)
        loss_fn = MultiTaskLoss(seg_output=getattr(model, "config", {}).get("seg_output", "classes"))
        rng = np.random.default_rng([self.seed, rnd])
        model.train()
        if self.settings.freeze_bn:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()  # normalise with the sites' real statistics; do not overwrite them
        losses = []
        for _ in range(self.settings.server_epochs):
            for k in rng.permutation(len(current)):  # one site's synthetic set per step: shapes differ across sites
                steps = [(current[k], True)]
                if earlier:
                    steps.append((earlier[int(rng.integers(len(earlier)))], False))
                for (images, masks, labels, soft), with_kl in steps:
                    outputs = model(images)
                    has_mask = masks.flatten(1).amax(1) > 0
                    loss, _ = loss_fn(outputs, masks, has_mask, labels)
                    if with_kl:
                        loss = loss + self.settings.kl_weight * distillation_kl(outputs, labels, soft,
                                                                                self.settings.temperature)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
        self.memory = [entry for entry in self.memory if entry[0] > rnd - self.settings.memory_rounds]
        if self.settings.memory_rounds > 0:
            self.memory += [(rnd, site, payload) for site, payload in sorted(replies.items())]
        model.eval()
        info = {"server_loss": float(np.mean(losses)) if losses else float("nan"), "memory_sets": len(earlier),
                "withheld": {site: int(p.meta.get("withheld", 0)) for site, p in replies.items()}}
        if self.dp.enabled:
            info["dp"] = {site: p.meta.get("dp") for site, p in replies.items()}
        return info

    def state_dict(self) -> dict:
        return {"memory": [(rnd, site, payload.kind, payload.arrays, payload.meta)
                           for rnd, site, payload in self.memory]}

    def load_state_dict(self, state: dict) -> None:
        self.memory = [(rnd, site, Payload(kind, arrays, meta))
                       for rnd, site, kind, arrays, meta in state.get("memory", [])]
