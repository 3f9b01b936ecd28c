"""One federated round, independent of how payloads travel: shared by the in-process simulator and the Flower
ServerApp. Server-side only: no import path to a site's cases (tested)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from monai.utils import set_determinism
from torch import nn

from gliofed.config import TrainConfig
from gliofed.errors import GliofedError
from gliofed.federated.centralized import Centralized
from gliofed.federated.distill import DistillFederation, DistillSettings
from gliofed.federated.fedavg import FedAvg
from gliofed.federated.fedprox import FedProx
from gliofed.federated.local import LocalOnly
from gliofed.federated.payload import Payload, validate
from gliofed.federated.strategy import Strategy

__all__ = ["STRATEGIES", "FederationError", "Exchange", "RoundResult", "make_strategy", "round_seed",
           "federated_round"]

log = logging.getLogger("gliofed.federated")

STRATEGIES = ("centralized", "local", "fedavg", "fedprox", "distill")

#: ``{site: (task, outgoing payload, settings)}`` -> ``{site: reply payload, or the exception that stopped it}``
Exchange = Callable[[dict[str, tuple[str, Payload, dict]]], dict[str, "Payload | BaseException"]]
#: (bytes_up, bytes_down, excluded, info) of one round, each per site except ``info``
RoundResult = tuple[dict[str, int], dict[str, int], dict[str, str], dict]


class FederationError(GliofedError):
    """A round could not proceed (too few sites answered)."""


def make_strategy(name: str, local_epochs: int = 1, mu: float = 0.01, distill: dict | None = None,
                  seed: int = 0) -> Strategy:
    """Build a strategy by name (one of :data:`STRATEGIES`)."""
    if name == "centralized":
        return Centralized(local_epochs)
    if name == "local":
        return LocalOnly(local_epochs)
    if name == "fedavg":
        return FedAvg(local_epochs)
    if name == "fedprox":
        return FedProx(local_epochs, mu)
    if name == "distill":
        return DistillFederation(DistillSettings(**(distill or {})), seed=seed)
    raise GliofedError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")


def round_seed(seed: int, rnd: int, index: int) -> int:
    """The seed of site number ``index`` (sites sorted by name) in round ``rnd``; ``index`` 10,000 is the server."""
    return int(seed) * 1_000_003 + rnd * 1_009 + index


def federated_round(strategy: Strategy, model: nn.Module, rnd: int, sites: Sequence[str], config: TrainConfig,
                    exchange: Exchange, min_sites: int = 1, max_payload_bytes: int | None = 256 * 2**20) -> RoundResult:
    """Broadcast, let every site answer through ``exchange``, validate the replies, aggregate into ``model``.

    A site whose reply fails (error, no answer, undeclared or oversized payload) is left out of the round
    with its reason; fewer than ``min_sites`` valid replies raise :class:`FederationError`.
    """
    counts_bytes = getattr(strategy, "counts_bytes", True)
    model.cpu()
    requests, bytes_down = {}, {}
    for index, site in enumerate(sites):
        outgoing = strategy.broadcast(site, model, rnd)
        bytes_down[site] = outgoing.nbytes if counts_bytes else 0
        settings = {"train": config.to_dict(), "model_config": model.config,
                    "seed": round_seed(config.seed, rnd, index), **strategy.site_settings(rnd)}
        requests[site] = (strategy.task, outgoing, settings)
    answers = exchange(requests)
    bytes_up, excluded, replies = {}, {}, {}
    for site in sites:
        reply = answers.get(site, TimeoutError("no reply"))
        try:
            if isinstance(reply, BaseException):
                raise reply
            validate(reply, max_payload_bytes)
        except Exception as error:  # a failing site is left out of this round, with its reason
            excluded[site] = f"{type(error).__name__}: {error}"
            bytes_up[site] = 0
            log.warning("round %d: site %s left out: %s", rnd, site, excluded[site])
            continue
        bytes_up[site] = reply.nbytes if counts_bytes else 0
        replies[site] = reply
    if len(replies) < min_sites:
        raise FederationError(f"round {rnd}: only {len(replies)} of {len(sites)} sites answered "
                              f"(min_sites={min_sites}): {excluded}.")
    set_determinism(seed=round_seed(config.seed, rnd, 10_000))
    info = strategy.aggregate(model, replies, rnd)
    model.cpu()
    return bytes_up, bytes_down, excluded, info
