"""The strategy interface shared by the in-process simulator and the Flower apps (server side only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from gliofed.errors import GliofedError
from gliofed.federated.payload import Payload, arrays_to_state, state_to_arrays

if TYPE_CHECKING:
    from gliofed.config import TrainConfig
    from gliofed.federated.rounds import Exchange, RoundResult

__all__ = ["Strategy", "FederationError", "weighted_average"]


class FederationError(GliofedError):
    """A round could not proceed (too few sites answered)."""


def weighted_average(updates: list[tuple[dict[str, np.ndarray], float]],
                     part_weights: list[dict[str, float]] | None = None) -> dict[str, np.ndarray]:
    """Average ``w:`` arrays weighted by the given weights; integer buffers (BatchNorm step counters) take
    the maximum.

    Args:
        updates: (arrays, weight) per site.
        part_weights: optional, one dict per update: ``{name prefix: weight}`` overriding that update's weight
            for the arrays whose name starts with the prefix (longest prefix wins). FedAvg uses it to weight the
            segmentation decoder by each site's masked cases and each marker head by its labelled cases. Where
            every site's weight of an array is zero (no site could train it), the plain weights apply.

    Returns:
        the averaged arrays.
    """
    averaged = {}
    for name in updates[0][0]:
        first = updates[0][0][name]
        if first.dtype.kind in "iu":
            averaged[name] = np.max([u[name] for u, _ in updates], axis=0).astype(first.dtype)
            continue
        weights = [_part_weight(name, w, part_weights[i] if part_weights else None) for i, (_, w) in enumerate(updates)]
        if sum(weights) <= 0:
            weights = [w for _, w in updates]
        total = float(sum(weights))
        averaged[name] = (sum(u[name].astype(np.float64) * (w / total) for (u, _), w in zip(updates, weights))
                          ).astype(first.dtype)
    return averaged


def _part_weight(name: str, default: float, parts: dict[str, float] | None) -> float:
    if not parts:
        return float(default)
    matches = [prefix for prefix in parts if name.startswith(prefix)]
    return float(parts[max(matches, key=len)]) if matches else float(default)


class Strategy:
    """What a strategy decides: which task sites run, with which settings, and how replies are combined.

    Subclasses set :attr:`name` and :attr:`task` and implement :meth:`aggregate`. Strategies only ever see
    :class:`Payload` objects and the global model.

    Args:
        local_epochs: epochs each site trains per round (``train`` task).
    """

    name = "strategy"
    task = "train"
    #: score the model(s) on the test split after every round (else only after the last)
    evaluate_each_round = True
    #: count the payloads' bytes as traffic (local-only's weights come back only to be scored, so it says no)
    counts_bytes = True

    def __init__(self, local_epochs: int = 1) -> None:
        self.local_epochs = local_epochs

    def run_round(self, model: nn.Module, rnd: int, sites: list[str], config: TrainConfig, exchange: Exchange,
                  min_sites: int = 1, max_payload_bytes: int | None = None) -> RoundResult:
        """Play round ``rnd``: by default the federated round of :func:`gliofed.federated.rounds.federated_round`
        (broadcast, every site answers through ``exchange``, validation, :meth:`aggregate`)."""
        from gliofed.federated.rounds import federated_round

        return federated_round(self, model, rnd, sites, config, exchange, min_sites=min_sites,
                               max_payload_bytes=max_payload_bytes)

    def participants(self, sites: list[str]) -> dict[str, list[str]]:
        """Who answers this strategy: participant name -> the sites whose training cases it holds (default: every
        site itself; the centralized baseline adds a data centre that holds them all)."""
        return {site: [site] for site in sites}

    def site_settings(self, rnd: int) -> dict:
        """Extra settings sent to every site this round (merged with the simulator's)."""
        return {"epochs": self.local_epochs}

    def broadcast(self, site: str, model: nn.Module, rnd: int) -> Payload:
        """The model payload sent to ``site`` this round (default: the global model)."""
        return Payload("model", state_to_arrays(model), {"round": rnd, "strategy": self.name})

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        """Update ``model`` in place from the sites' replies; return information for the history."""
        raise NotImplementedError

    def models_to_evaluate(self, model: nn.Module) -> dict[str, dict[str, np.ndarray]]:
        """Name -> weights of every model whose test metrics the history records (default: the global one)."""
        return {"global": state_to_arrays(model)}

    def identity(self) -> dict:
        """What makes a run of this strategy the run it is: its name and the settings it sends sites (a resume must
        match it). Plain JSON types."""
        import json

        return {"name": self.name, "settings": json.loads(json.dumps(self.site_settings(1), default=str))}

    def state_dict(self) -> dict:
        """Strategy state to checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @staticmethod
    def load(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
        model.load_state_dict(arrays_to_state(arrays))
