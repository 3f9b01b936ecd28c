"""Server-side strategies: what each round asks of the sites and how their replies become the global model.

Nothing under ``federated/server/`` has an import path to a site's cases (tested from the folders).
"""

from __future__ import annotations

from gliofed.errors import ConfigError, GliofedError
from gliofed.federated.server.strategies.aggregation import AGGREGATIONS
from gliofed.federated.server.strategies.base import FederationError, Strategy, weighted_average
from gliofed.federated.server.strategies.centralized import Centralized
from gliofed.federated.server.strategies.distill import DistillFederation, DistillSettings
from gliofed.federated.server.strategies.fedavg import FedAvg
from gliofed.federated.server.strategies.fedprox import FedProx
from gliofed.federated.server.strategies.local_only import LocalOnly

__all__ = ["STRATEGIES", "AGGREGATIONS", "Strategy", "FederationError", "weighted_average", "make_strategy",
           "Centralized", "LocalOnly", "FedAvg", "FedProx", "DistillFederation", "DistillSettings"]

STRATEGIES = ("centralized", "local", "fedavg", "fedprox", "distill")


def make_strategy(name: str, local_epochs: int = 1, mu: float = 0.01, distill: dict | None = None,
                  seed: int = 0, dp=None, aggregation: str = "mean") -> Strategy:
    """Build a strategy by name (one of :data:`STRATEGIES`). ``dp``: the differential-privacy dial
    (:class:`~gliofed.dp.DPSettings` or its dict) of FedAvg, FedProx and distillation (default off); asking it of
    another strategy is a :class:`GliofedError`. ``aggregation`` (one of :data:`AGGREGATIONS`, default ``"mean"``)
    applies to ``fedavg`` and ``fedprox`` only, and another value for any other strategy is refused."""
    if aggregation != "mean" and name not in ("fedavg", "fedprox"):
        raise ConfigError(f"aggregation {aggregation!r} applies to fedavg and fedprox, not {name}.")
    if dp is not None and name not in ("fedavg", "fedprox", "distill"):
        from gliofed.dp import DPSettings

        if DPSettings.from_dict(dp if isinstance(dp, dict) else dp.to_dict()).enabled:
            raise GliofedError(f"strategy {name!r} has no differential-privacy dial (fedavg, fedprox and distill do).")
    if name == "centralized":
        return Centralized(local_epochs)
    if name == "local":
        return LocalOnly(local_epochs)
    if name == "fedavg":
        return FedAvg(local_epochs, dp=dp, aggregation=aggregation)
    if name == "fedprox":
        return FedProx(local_epochs, mu, dp=dp, aggregation=aggregation)
    if name == "distill":
        return DistillFederation(DistillSettings(**(distill or {})), seed=seed, dp=dp)
    raise GliofedError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")
