"""FedAvg (McMahan et al., AISTATS 2017): case-count weighted averaging of locally trained weights.

Partial labels: a site without masks cannot train the segmentation decoder, and a site that never records a
marker cannot train that marker's head; its copy of those parameters is the old global one. Weighting them by
total cases would pull every round's update back towards the old weights (by the share of such sites). So the
decoder and segmentation head are weighted by each site's masked cases (``n_masked``) and each marker head by
its cases with a known label (``n_labelled``); the shared encoder and the classification MLP by all cases.

Options every weight-sharing strategy (FedAvg, FedProx, FedAvgM, FedAdam, FedBN) takes:

- ``lr_schedule="cosine"``: round r's site learning rate is ``lr * (1 + cos(pi (r - 1) / rounds)) / 2``, floored at
  :data:`LR_FLOOR` x ``lr`` (``rounds``: the run's rounds); sent as the request's training ``lr``, so a site's policy
  bounds it like any learning rate.
- ``keep_optimizer=True``: each site keeps its optimizer's state (AdamW moments) from one round to the next instead
  of starting fresh (the site's own state: nothing more leaves it).
- ``transport="float16"``: weights travel in float16 both ways (the server sends float16, a site answers in the
  precision it was sent); the server's model stays float32. Halves the bytes, rounds every weight each round.
- ``aggregation="median"`` or ``"trimmed-mean"`` (FedAvg and FedProx) replaces the weighted mean by a robust,
  unweighted one (:mod:`~gliofed.federated.server.strategies.aggregation`) against a site that sends scaled or
  poisoned updates.
- ``dp``: the differential-privacy dial sent to every site (:class:`~gliofed.dp.DPSettings`).
"""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from gliofed.dp import DPSettings
from gliofed.errors import ConfigError
from gliofed.federated.protocol import Payload, Request
from gliofed.federated.server.strategies.aggregation import check_aggregation, coordinate_median, trimmed_mean
from gliofed.federated.server.strategies.base import Strategy, weighted_average
from gliofed.vocab import MARKERS

__all__ = ["FedAvg", "SEGMENTATION_PREFIXES", "LR_SCHEDULES", "TRANSPORTS", "LR_FLOOR", "part_weights",
           "schedule_factor"]

#: learning-rate schedules over the rounds
LR_SCHEDULES = ("constant", "cosine")
#: precisions weights can travel in
TRANSPORTS = ("float32", "float16")
#: the cosine schedule's floor, as a share of the base learning rate
LR_FLOOR = 0.05


def schedule_factor(schedule: str, rnd: int, rounds: int | None) -> float:
    """The share of the base learning rate a site trains with in round ``rnd`` (1-based) of ``rounds``:
    1 for ``"constant"``; for ``"cosine"``, ``(1 + cos(pi (rnd - 1) / rounds)) / 2``, at least :data:`LR_FLOOR`.

    >>> schedule_factor("cosine", 1, 10), round(schedule_factor("cosine", 6, 10), 3)
    (1.0, 0.5)
    """
    if schedule == "constant":
        return 1.0
    return max(LR_FLOOR, 0.5 * (1 + math.cos(math.pi * (rnd - 1) / rounds)))

#: state-dict prefixes (``w:`` arrays) of the parameters only the segmentation loss trains
SEGMENTATION_PREFIXES = ("w:upcat_", "w:seg_head.")


def part_weights(payload: Payload) -> dict[str, float]:
    """``{prefix: weight}`` of one site's update: decoder and segmentation head by masked cases, each marker head
    by its labelled cases. A site that does not disclose them (an older client) gets its total case count."""
    n_cases = float(payload.meta["n_cases"])
    weights = {prefix: float(payload.meta.get("n_masked", n_cases)) for prefix in SEGMENTATION_PREFIXES}
    labelled = payload.meta.get("n_labelled") or {}
    for marker in MARKERS:
        weights[f"w:heads.{marker}."] = float(labelled.get(marker, n_cases))
    return weights


class FedAvg(Strategy):
    """Each round every site trains ``local_epochs`` from the global model; the server averages the
    weights (and BatchNorm statistics) weighted by the sites' case counts — the decoder by masked cases and
    each marker head by labelled cases (:func:`part_weights`) unless ``partial_weights=False``.

    Args:
        local_epochs: local epochs per round (default 1).
        partial_weights: weight task-specific parameters by the cases that train them (default True; the mean only).
        dp: the differential-privacy dial sent to every site (:class:`~gliofed.dp.DPSettings` or its dict; default
            off): ``"dp_sgd"`` (needs a GroupNorm model) or ``"clipped_update"``. Each site accounts what it spends
            and says so in its reply (``meta["dp"]``); the round's info records it per site.
        aggregation: ``"mean"`` (default: the weighted mean above), ``"median"`` (coordinate-wise median) or
            ``"trimmed-mean"`` (coordinate-wise mean after cutting ``trim`` of the sites at each end), as Flower's
            FedAvg, FedMedian and FedTrimmedAvg.
        trim: the fraction the trimmed mean cuts at each end (default 0.2).
        lr_schedule: ``"constant"`` (default) or ``"cosine"`` (see the module docstring; needs ``rounds``).
        rounds: the run's rounds (the cosine schedule's length).
        keep_optimizer: sites keep their optimizer state across rounds (default False: a fresh optimizer per round).
        transport: ``"float32"`` (default) or ``"float16"``: the precision weights travel in, both ways.

    Raises:
        ConfigError: an unknown schedule or transport, or a cosine schedule without ``rounds``.
    """

    name = "fedavg"
    task = "train"

    def __init__(self, local_epochs: int = 1, partial_weights: bool = True,
                 dp: DPSettings | dict | None = None, aggregation: str = "mean", trim: float = 0.2, *,
                 lr_schedule: str = "constant", rounds: int | None = None, keep_optimizer: bool = False,
                 transport: str = "float32") -> None:
        super().__init__(local_epochs)
        check_aggregation(aggregation, trim)
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"learning-rate schedule {lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}.")
        if lr_schedule != "constant" and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
            raise ConfigError(f"a {lr_schedule} learning-rate schedule needs the run's rounds (a positive integer), "
                              f"not {rounds!r}.")
        if transport not in TRANSPORTS:
            raise ConfigError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}.")
        self.partial_weights = partial_weights
        self.dp = dp if isinstance(dp, DPSettings) else DPSettings.from_dict(dp)
        self.aggregation, self.trim = aggregation, float(trim)
        self.lr_schedule, self.rounds = lr_schedule, rounds
        self.keep_optimizer, self.transport = bool(keep_optimizer), transport

    def options(self) -> dict:
        """The strategy's settings beyond the local epochs (part of its :meth:`identity`)."""
        return {"partial_weights": self.partial_weights, "lr_schedule": self.lr_schedule, "rounds": self.rounds,
                "keep_optimizer": self.keep_optimizer, "transport": self.transport}

    def identity(self) -> dict:
        """The name and site settings with the options, plus the server's aggregation when it is not the default
        mean (a resume with another aggregation is another run)."""
        identity = super().identity()
        identity["settings"] = {**identity["settings"], "options": self.options()}
        if self.aggregation != "mean":
            identity["server"] = {"aggregation": self.aggregation, "trim": self.trim}
        return identity

    def site_settings(self, rnd: int) -> dict:
        settings = super().site_settings(rnd)
        if self.keep_optimizer:
            settings["keep_optimizer"] = True
        if self.dp.enabled:  # absent when off: a run without DP asks exactly what it asked before
            settings["dp"] = self.dp.to_dict()
        return settings

    def broadcast(self, site: str, model: nn.Module, rnd: int) -> Payload:
        return self.in_transport(super().broadcast(site, model, rnd))

    def in_transport(self, payload: Payload) -> Payload:
        """``payload`` with its floating-point arrays in the transport precision."""
        if self.transport == "float32":
            return payload
        dtype = np.dtype(self.transport)
        payload.arrays = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in payload.arrays.items()}
        return payload

    def configure_round(self, model: nn.Module, rnd: int, sites: list[str], config) -> dict[str, Request]:
        if self.lr_schedule != "constant" and getattr(config, "lr_schedule", "constant") != "constant":
            raise ConfigError(f"the strategy's {self.lr_schedule} schedule over rounds and the training config's "
                              f"{config.lr_schedule} schedule over epochs would both scale the learning rate; "
                              "choose one.")
        requests = super().configure_round(model, rnd, sites, config)
        factor = schedule_factor(self.lr_schedule, rnd, self.rounds)
        if factor == 1.0:
            return requests
        out = {}
        for site, request in requests.items():
            train = {**request.settings["train"], "lr": float(request.settings["train"]["lr"]) * factor}
            out[site] = request._replace(settings={**request.settings, "train": train})
        return out

    def average(self, replies: dict[str, Payload]) -> dict[str, np.ndarray]:
        """The replies' aggregate: the weighted average (:func:`weighted_average` with :func:`part_weights` unless
        ``partial_weights=False``), or the coordinate-wise median or trimmed mean (``aggregation``)."""
        if self.aggregation == "median":
            return coordinate_median([p.arrays for p in replies.values()])
        if self.aggregation == "trimmed-mean":
            return trimmed_mean([p.arrays for p in replies.values()], self.trim)
        updates = [(p.arrays, float(p.meta["n_cases"])) for p in replies.values()]
        parts = [part_weights(p) for p in replies.values()] if self.partial_weights else None
        return weighted_average(updates, parts)

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        self.load(model, self.average(replies))
        info = {"site_loss": {site: p.meta.get("loss") for site, p in replies.items()}}
        if self.dp.enabled:
            info["dp"] = {site: p.meta.get("dp") for site, p in replies.items()}
        return info
