"""FedAvg (McMahan et al., AISTATS 2017): case-count weighted averaging of locally trained weights."""

from __future__ import annotations

from torch import nn

from gliofed.federated.payload import Payload
from gliofed.federated.strategies.base import Strategy, weighted_average

__all__ = ["FedAvg"]


class FedAvg(Strategy):
    """Each round every site trains ``local_epochs`` from the global model; the server averages the
    weights (and BatchNorm statistics) weighted by the sites' case counts.

    Args:
        local_epochs: local epochs per round (default 1).
    """

    name = "fedavg"
    task = "train"

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        updates = [(p.arrays, float(p.meta["n_cases"])) for p in replies.values()]
        self.load(model, weighted_average(updates))
        return {"site_loss": {site: p.meta.get("loss") for site, p in replies.items()}}
