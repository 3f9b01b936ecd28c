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
from gliofed.federated.server.strategies.fedbn import FedBN
from gliofed.federated.server.strategies.fedopt import FedAdam, FedAvgM
from gliofed.federated.server.strategies.fedprox import FedProx
from gliofed.federated.server.strategies.local_only import LocalOnly

__all__ = ["STRATEGIES", "WEIGHT_SHARING", "ALL_STRATEGIES", "AGGREGATIONS", "Strategy", "FederationError",
           "weighted_average", "make_strategy", "Centralized", "LocalOnly", "FedAvg", "FedProx", "FedAvgM", "FedAdam",
           "FedBN", "DistillFederation", "DistillSettings"]

#: the five strategies of the comparison (notebooks, CLI, Flower)
STRATEGIES = ("centralized", "local", "fedavg", "fedprox", "distill")
#: strategies that average locally trained weights (they take FedAvg's options, see :class:`FedAvg`)
WEIGHT_SHARING = {"fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM, "fedadam": FedAdam, "fedbn": FedBN}
#: every strategy :func:`make_strategy` builds
ALL_STRATEGIES = (*STRATEGIES, "fedavgm", "fedadam", "fedbn")


def make_strategy(name: str, local_epochs: int = 1, mu: float = 0.01, distill: dict | None = None,
                  seed: int = 0, options: dict | None = None, dp=None, aggregation: str = "mean") -> Strategy:
    """Build a strategy by name (one of :data:`ALL_STRATEGIES`).

    Args:
        name: the strategy.
        local_epochs: local epochs per round (weight-sharing strategies, local-only; centralized: epochs per round).
        mu: FedProx's proximal weight.
        distill: distillation settings (:class:`DistillSettings` fields).
        seed: seeds distillation's server.
        options: further settings of a weight-sharing strategy (:class:`FedAvg`'s ``lr_schedule``, ``rounds``,
            ``keep_optimizer``, ``transport``, ``partial_weights``; FedAvgM's ``server_lr``, ``momentum``; FedAdam's
            ``server_lr``, ``beta1``, ``beta2``, ``tau``).
        dp: the differential-privacy dial (:class:`~gliofed.dp.DPSettings` or its dict) of FedAvg, FedProx and
            distillation (default off); asking it of another strategy is refused.
        aggregation: one of :data:`AGGREGATIONS` (default ``"mean"``); another value applies to ``fedavg`` and
            ``fedprox`` only.

    Raises:
        GliofedError: an unknown strategy, options a strategy does not take, or DP or a robust aggregation asked of a
            strategy without them.
    """
    if aggregation != "mean" and name not in ("fedavg", "fedprox"):
        raise ConfigError(f"aggregation {aggregation!r} applies to fedavg and fedprox, not {name}.")
    if dp is not None and name not in ("fedavg", "fedprox", "distill"):
        from gliofed.dp import DPSettings

        if DPSettings.from_dict(dp if isinstance(dp, dict) else dp.to_dict()).enabled:
            raise GliofedError(f"strategy {name!r} has no differential-privacy dial (fedavg, fedprox and distill do).")
    options = dict(options or {})
    if name in WEIGHT_SHARING:
        if name == "fedprox":
            options["mu"] = mu
        if name in ("fedavg", "fedprox"):
            options.update(dp=dp, aggregation=aggregation)
        try:
            return WEIGHT_SHARING[name](local_epochs, **options)
        except TypeError as error:
            raise GliofedError(f"strategy {name!r} does not take these options: {error}.") from None
    if options:
        raise GliofedError(f"strategy {name!r} takes no options (got {', '.join(sorted(options))}).")
    if name == "centralized":
        return Centralized(local_epochs)
    if name == "local":
        return LocalOnly(local_epochs)
    if name == "distill":
        return DistillFederation(DistillSettings(**(distill or {})), seed=seed, dp=dp)
    raise GliofedError(f"unknown strategy {name!r}; choose one of {', '.join(ALL_STRATEGIES)}.")
