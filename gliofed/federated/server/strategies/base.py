"""The strategy interface shared by the in-process simulator and the Flower ServerApp (server side only): a strategy
configures each round and aggregates its validated replies; :func:`~gliofed.federated.server.rounds.federated_round`
plays the round."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from gliofed.errors import FederationError
from gliofed.federated.protocol import Payload, Request, arrays_to_state, round_seed, site_request, state_to_arrays

if TYPE_CHECKING:
    from gliofed.config import TrainConfig

__all__ = ["Strategy", "FederationError", "weighted_average"]


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
    """What a strategy decides: which task sites run, with which settings, who must answer, and how replies are
    combined (compare Flower's ``Strategy``: ``configure_train`` and ``aggregate_train``).

    Subclasses set :attr:`name` and :attr:`task` and implement :meth:`aggregate`; they may override
    :meth:`configure_round`, :meth:`check_answers` and :meth:`traffic`. Strategies only ever see :class:`Payload`
    objects and the global model.

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

    def configure_round(self, model: nn.Module, rnd: int, sites: list[str], config: TrainConfig) -> dict[str, Request]:
        """One request per participant this round (default: every site gets :attr:`task` with :meth:`broadcast`'s
        payload, :meth:`site_settings` and its own :func:`round_seed`, sites numbered in the order given)."""
        return {site: site_request(config, model, round_seed(config.seed, rnd, index), self.task,
                                   self.broadcast(site, model, rnd), self.site_settings(rnd))
                for index, site in enumerate(sites)}

    def check_answers(self, rnd: int, requests: dict[str, Request], replies: dict[str, Payload],
                      excluded: dict[str, str], min_sites: int) -> None:
        """Decide whether the round goes on with the valid ``replies`` (``excluded``: participant -> reason).
        Default: at least ``min_sites`` of them.

        Raises:
            FederationError: the round cannot proceed.
        """
        if len(replies) < min_sites:
            reasons = "; ".join(f"{site}: {reason}" for site, reason in excluded.items())
            raise FederationError(f"round {rnd}: only {len(replies)} of {len(requests)} sites answered "
                                  f"(min_sites={min_sites}): {reasons}.")

    def traffic(self, sites: list[str], requests: dict[str, Request],
                replies: dict[str, Payload]) -> tuple[dict[str, int], dict[str, int]]:
        """Bytes up and down per site this round (default: each valid reply's and each request's payload on the
        wire, or 0 where :attr:`counts_bytes` is False; a site left out sent nothing)."""
        up = {site: replies[site].nbytes if self.counts_bytes and site in replies else 0 for site in requests}
        down = {site: request.payload.nbytes if self.counts_bytes else 0 for site, request in requests.items()}
        return up, down

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        """Update ``model`` in place from the sites' replies; return information for the history."""
        raise NotImplementedError

    def models_to_evaluate(self, model: nn.Module) -> dict[str, dict[str, np.ndarray]]:
        """Name -> weights of every model whose test metrics the history records (default: the global one)."""
        return {"global": state_to_arrays(model)}

    def case_site_models(self, model: nn.Module) -> dict[str, dict[str, np.ndarray]]:
        """Site -> the weights that score that site's test cases, where a strategy's model depends on the site
        (FedBN); a case of a site not listed is scored by ``models_to_evaluate(model)["global"]``. Default: none
        (every model of :meth:`models_to_evaluate` scores every case)."""
        return {}

    def identity(self) -> dict:
        """What makes a run of this strategy the run it is: its name and the settings it sends sites (a resume must
        match it). Plain JSON types."""
        return {"name": self.name, "settings": json.loads(json.dumps(self.site_settings(1), default=str))}

    def state_dict(self) -> dict:
        """Strategy state to checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @staticmethod
    def load(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
        model.load_state_dict(arrays_to_state(arrays))
