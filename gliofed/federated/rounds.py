"""One federated round, independent of how payloads travel: shared by the in-process simulator and the Flower
ServerApp. Server-side only: no import path to a site's cases (tested)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from monai.utils import set_determinism
from torch import nn

from gliofed.config import TrainConfig
from gliofed.federated.payload import Payload, validate
from gliofed.federated.strategies.base import FederationError, Strategy

__all__ = ["FederationError", "Exchange", "Request", "RoundResult", "round_seed", "site_request", "federated_round"]

log = logging.getLogger("gliofed.federated")

#: what the server sends a site: (task, outgoing payload, settings)
Request = tuple[str, Payload, dict]
#: ``{site: request}`` -> ``{site: reply payload, or the exception that stopped it}``
Exchange = Callable[[dict[str, Request]], dict[str, "Payload | BaseException"]]
#: (bytes_up, bytes_down, excluded, info) of one round, each per site except ``info``
RoundResult = tuple[dict[str, int], dict[str, int], dict[str, str], dict]


def round_seed(seed: int, rnd: int, index: int) -> int:
    """The seed of site number ``index`` (sites sorted by name) in round ``rnd``; ``index`` 10,000 is the server."""
    return int(seed) * 1_000_003 + rnd * 1_009 + index


def site_request(config: TrainConfig, model: nn.Module, seed: int, task: str, outgoing: Payload,
                 extra: dict | None = None) -> Request:
    """One request to a site: the task, the outgoing payload and the settings every site reads (``train``: the
    training config, ``model_config``, ``seed``: see :func:`round_seed`) plus the strategy's ``extra``."""
    return task, outgoing, {"train": config.to_dict(), "model_config": model.config, "seed": seed, **(extra or {})}


def federated_round(strategy: Strategy, model: nn.Module, rnd: int, sites: Sequence[str], config: TrainConfig,
                    exchange: Exchange, min_sites: int = 1, max_payload_bytes: int | None = 256 * 2**20) -> RoundResult:
    """Broadcast, let every site answer through ``exchange``, validate the replies, aggregate into ``model``.

    A site whose reply fails (error, no answer, undeclared or oversized payload) is left out of the round
    with its reason; fewer than ``min_sites`` valid replies raise :class:`FederationError`.
    """
    model.cpu()
    requests, bytes_down = {}, {}
    for index, site in enumerate(sites):
        outgoing = strategy.broadcast(site, model, rnd)
        bytes_down[site] = outgoing.nbytes if strategy.counts_bytes else 0
        requests[site] = site_request(config, model, round_seed(config.seed, rnd, index), strategy.task, outgoing,
                                      strategy.site_settings(rnd))
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
        bytes_up[site] = reply.nbytes if strategy.counts_bytes else 0
        replies[site] = reply
    if len(replies) < min_sites:
        raise FederationError(f"round {rnd}: only {len(replies)} of {len(sites)} sites answered "
                              f"(min_sites={min_sites}): {excluded}.")
    set_determinism(seed=round_seed(config.seed, rnd, 10_000))
    info = strategy.aggregate(model, replies, rnd)
    model.cpu()
    return bytes_up, bytes_down, excluded, info
