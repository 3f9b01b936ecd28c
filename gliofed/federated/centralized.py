"""Centralized baseline: all sites' training cases pooled in one place — the privacy-violating upper bound.

This is not federated learning: the simulator trains on the pooled cases directly and counts, as bytes
up, the size of each site's cached training cases (what pooling would transfer).
"""

from __future__ import annotations

from torch import nn

from gliofed.federated.payload import Payload
from gliofed.federated.strategy import Strategy

__all__ = ["Centralized"]


class Centralized(Strategy):
    """Pooled training; ``local_epochs`` = epochs over the pooled data per round.

    Args:
        local_epochs: epochs per round (default 1).
    """

    name = "centralized"
    task = "pooled"

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        return {}
