"""FedProx (Li et al., MLSys 2020): FedAvg with a proximal term mu/2 ||w - w_global||^2 in local training."""

from __future__ import annotations

from gliofed.federated.server.strategies.fedavg import FedAvg

__all__ = ["FedProx"]


class FedProx(FedAvg):
    """FedAvg whose sites add ``mu / 2 * ||w - w_global||^2`` to their local loss.

    Args:
        local_epochs: local epochs per round (default 1).
        mu: proximal weight (default 0.01).
        partial_weights, aggregation, trim: as in :class:`FedAvg` (default True, ``"mean"``, 0.2).
        dp: as in :class:`FedAvg` (default off).
        options: :class:`FedAvg`'s further options (learning-rate schedule, kept optimizer state, transport).
    """

    name = "fedprox"

    def __init__(self, local_epochs: int = 1, mu: float = 0.01, partial_weights: bool = True, dp=None,
                 aggregation: str = "mean", trim: float = 0.2, **options) -> None:
        super().__init__(local_epochs, partial_weights, dp, aggregation, trim, **options)
        self.mu = mu

    def site_settings(self, rnd: int) -> dict:
        return {**super().site_settings(rnd), "mu": self.mu}
