"""The privacy audit experiment: every site condenses under a model with each initialisation and audits its own
upload (inside the site, :meth:`~gliofed.federated.site.Site.privacy_audit`); the reports are stacked."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset
from gliofed.errors import ConfigError
from gliofed.federated.protocol import round_seed, site_request
from gliofed.federated.protocol.payload import Payload, state_to_arrays
from gliofed.federated.protocol.settings import DistillSettings
from gliofed.federated.site import Site
from gliofed.federated.site.policy import SitePolicy

__all__ = ["privacy_audit", "outgoing_audit", "condensation_request"]


def privacy_audit(cache_dir: str | Path, model: torch.nn.Module, config: TrainConfig, distill: dict | None = None,
                  inits: tuple[str, ...] = ("class_stats",), seed: int = 0) -> pd.DataFrame:
    """Ask every site to condense under ``model`` with each initialisation in ``inits`` and to audit its own
    upload; return all reports stacked.

    Pass ``inits=("class_stats", "real_unsafe")`` to show what the audit flags. The experimenter is every site's
    operator here and opts in locally (:meth:`SitePolicy.teaching`): ``real_unsafe`` allowed and flagged sets
    returned rather than refused, so that the report can show them."""
    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed)
    outgoing = Payload("model", state_to_arrays(model), {"round": 0, "strategy": "audit"})
    reports = []
    for index, name in enumerate(train.sites):
        site = Site(name, cache_dir, config.modalities, config.seed, policy=SitePolicy.teaching())
        for init in inits:
            task, payload, settings = site_request(config, model, round_seed(seed, 0, index), "distill", outgoing,
                                                   {"distill": {**(distill or {}), "init": init}})
            reports.append(site.privacy_audit(site.handle(task, payload, settings)))
    return pd.concat(reports, ignore_index=True)


def condensation_request(model: torch.nn.Module, config: TrainConfig, distill: dict | None, seed: int) -> dict:
    """What the sets of a condensation request to every site depend on, beside the site and the initialisation: the
    model's weights (a SHA-256 of their bytes), the request seed, the training settings and the other distillation
    settings. Equal records ask every site for the same set (:attr:`DistilledSets.request`)."""
    digest = hashlib.sha256()
    for name, array in sorted(state_to_arrays(model).items()):
        digest.update(name.encode("utf-8"))
        digest.update(np.ascontiguousarray(array).tobytes())
    knobs = {k: v for k, v in dataclasses.asdict(DistillSettings(**(distill or {}))).items() if k != "init"}
    return {"model": digest.hexdigest(), "seed": int(seed), "train": config.to_dict(), "distill": knobs}


def outgoing_audit(cache_dir: str | Path, model: torch.nn.Module, config: TrainConfig, distill: dict | None = None,
                   seed: int = 0, made=None) -> tuple[pd.DataFrame, list[str]]:
    """Every part of what each site would upload under ``model`` (the default distillation payload), audited as the
    site does before upload (:meth:`Site.audit_payload`), and what its default policy then sends.

    Args:
        cache_dir, model, config, distill, seed: the sites' cache, the model, the training settings, the
            distillation settings (the preset's), the request seed.
        made: the sets the sites already condensed (:class:`~gliofed.experiments.teaching.DistilledSets`, from
            :func:`~gliofed.experiments.teaching.distilled_sets` with the same ``model``, ``config``, ``distill`` and
            ``seed``): a site's set made with the settings' initialisation is audited as it was made instead of being
            condensed again (the same request gives the same set). ``real_unsafe`` sets are never reused: this
            audit's sites refuse that request, as they would without ``made``.

    Raises:
        ConfigError: ``made`` was condensed under another model, seed or settings.

    Returns:
        (one row per site and part (per volume for synthetic volumes): ``site``, ``part``, ``item``, ``rule``,
        ``value``, ``limit``, ``passed``, ``uploaded``; the sentences the sites say: one per site that withholds
        volumes or refuses to send, empty when everything passed)."""
    from gliofed.federated.site.privacy import outgoing_decision

    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed)
    outgoing = Payload("model", state_to_arrays(model), {"round": 0, "strategy": "audit"})
    init = DistillSettings(**(distill or {})).init
    reusable = {}
    if made is not None:
        if made.request != condensation_request(model, config, distill, seed):
            raise ConfigError("the distilled sets given as `made` were condensed under another model, seed or settings "
                              "than this audit's; pass sets made with the same ones, or none.")
        if init != "real_unsafe":
            reusable = made.payloads
    tables, sentences = [], []
    for index, name in enumerate(train.sites):
        # the experimenter reads the set before the site's decision (teaching policy), then applies the decision
        site = Site(name, cache_dir, config.modalities, config.seed, policy=SitePolicy.teaching(allow_real_init=False))
        reply = reusable.get((name, init))
        if reply is None:
            task, payload, settings = site_request(config, model, round_seed(seed, 0, index), "distill", outgoing,
                                                   {"distill": dict(distill or {})})
            reply = site.handle(task, payload, settings)
        report = site.audit_payload(reply)
        keep, sentence, refusal = outgoing_decision(name, "distilled_set", report)
        volume = report["part"] == "synthetic_volume"
        report["uploaded"] = refusal is None
        report.loc[volume, "uploaded"] = report.loc[volume, "item"].astype(int).isin(keep) & (refusal is None)
        tables.append(report)
        sentences += [line for line in (sentence, refusal) if line]
    return pd.concat(tables, ignore_index=True), sentences
