"""FedAvg (McMahan et al., AISTATS 2017): case-count weighted averaging of locally trained weights.

Partial labels: a site without masks cannot train the segmentation decoder, and a site that never records a
marker cannot train that marker's head; its copy of those parameters is the old global one. Weighting them by
total cases would pull every round's update back towards the old weights (by the share of such sites). So the
decoder and segmentation head are weighted by each site's masked cases (``n_masked``) and each marker head by
its cases with a known label (``n_labelled``); the shared encoder and the classification MLP by all cases.

``aggregation="median"`` or ``"trimmed-mean"`` replaces the weighted mean by a robust, unweighted one
(:mod:`~gliofed.federated.server.strategies.aggregation`) against a site that sends scaled or poisoned updates.
"""

from __future__ import annotations

from torch import nn

from gliofed.dp import DPSettings
from gliofed.federated.protocol import Payload
from gliofed.federated.server.strategies.aggregation import check_aggregation, coordinate_median, trimmed_mean
from gliofed.federated.server.strategies.base import Strategy, weighted_average
from gliofed.vocab import MARKERS

__all__ = ["FedAvg", "SEGMENTATION_PREFIXES", "part_weights"]

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
    """

    name = "fedavg"
    task = "train"

    def __init__(self, local_epochs: int = 1, partial_weights: bool = True,
                 dp: DPSettings | dict | None = None, aggregation: str = "mean", trim: float = 0.2) -> None:
        super().__init__(local_epochs)
        check_aggregation(aggregation, trim)
        self.partial_weights = partial_weights
        self.dp = dp if isinstance(dp, DPSettings) else DPSettings.from_dict(dp)
        self.aggregation, self.trim = aggregation, float(trim)

    def site_settings(self, rnd: int) -> dict:
        settings = super().site_settings(rnd)
        if self.dp.enabled:  # absent when off: a run without DP asks exactly what it asked before
            settings["dp"] = self.dp.to_dict()
        return settings

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        if self.aggregation == "median":
            self.load(model, coordinate_median([p.arrays for p in replies.values()]))
        elif self.aggregation == "trimmed-mean":
            self.load(model, trimmed_mean([p.arrays for p in replies.values()], self.trim))
        else:
            updates = [(p.arrays, float(p.meta["n_cases"])) for p in replies.values()]
            parts = [part_weights(p) for p in replies.values()] if self.partial_weights else None
            self.load(model, weighted_average(updates, parts))
        info = {"site_loss": {site: p.meta.get("loss") for site, p in replies.items()}}
        if self.dp.enabled:
            info["dp"] = {site: p.meta.get("dp") for site, p in replies.items()}
        return info

    def identity(self) -> dict:
        """The name and site settings, plus the server's aggregation when it is not the default mean (a resume with
        another aggregation is another run)."""
        identity = super().identity()
        if self.aggregation != "mean":
            identity["server"] = {"aggregation": self.aggregation, "trim": self.trim}
        return identity
