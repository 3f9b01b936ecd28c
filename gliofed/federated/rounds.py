"""One federated round, independent of how payloads travel: shared by the in-process simulator and the Flower
ServerApp. Server-side only: no import path to a site's cases (tested)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from monai.utils import set_determinism
from torch import nn

from gliofed.config import TrainConfig
from gliofed.federated.payload import Payload, PayloadError, validate_reply
from gliofed.federated.strategies.base import FederationError, Strategy

__all__ = ["FederationError", "Exchange", "Request", "RoundResult", "REPLY_KINDS", "SiteFailure", "round_seed",
           "site_request", "federated_round", "one_line", "check_reply"]

log = logging.getLogger("gliofed.federated")

#: what the server sends a site: (task, outgoing payload, settings)
Request = tuple[str, Payload, dict]
#: ``{site: request}`` -> ``{site: reply payload, or the exception that stopped it}``
Exchange = Callable[[dict[str, Request]], dict[str, "Payload | BaseException"]]
#: (bytes_up, bytes_down, excluded, info) of one round, each per site except ``info``
RoundResult = tuple[dict[str, int], dict[str, int], dict[str, str], dict]


#: task -> the payload kind a site must answer it with
REPLY_KINDS = {"train": "weights_update", "distill": "distilled_set", "describe": "site_info"}

#: longest skip reason kept (characters)
MAX_REASON = 300


class SiteFailure(Exception):
    """A failure reported by a site elsewhere (over a transport), carried as its already formatted one-line reason."""


def one_line(error: BaseException, limit: int = MAX_REASON) -> str:
    """``"Type: first line of the message"``, at most ``limit`` characters: the reason a site sat a round out
    (a remote site's nested traceback must not become a 57-line reason)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, SiteFailure):
        reason = lines[0] if lines else "site failed"
    else:
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def check_reply(site: str, reply: Payload, task: str, outgoing: Payload, max_bytes: int | None) -> None:
    """Validate one site's reply to ``task`` before anything aggregates it: its kind, the declared fields, shapes and
    dtypes against the broadcast model's arrays, finiteness, typed metadata (:func:`validate_reply`), and that it
    names the site that sent it.

    Raises:
        PayloadError: the reply is not one the server may aggregate.
    """
    if not isinstance(reply, Payload):
        raise PayloadError(f"site {site} answered with a {type(reply).__name__}, not a payload.")
    validate_reply(reply, REPLY_KINDS.get(task, task), outgoing.arrays, max_bytes)
    claimed = reply.meta.get("site")
    if claimed != site:
        raise PayloadError(f"the reply of site {site} names site {claimed!r}.")


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

    A site whose reply fails (error, refusal, no answer, or a reply that :func:`check_reply` refuses) is left out
    of the round with a one-line reason (:func:`one_line`); fewer than ``min_sites`` valid replies raise
    :class:`FederationError`. Only validated replies reach :meth:`Strategy.aggregate`.
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
            check_reply(site, reply, strategy.task, requests[site][1], max_payload_bytes)
        except Exception as error:  # a failing site is left out of this round, with its reason
            excluded[site] = one_line(error)
            bytes_up[site] = 0
            log.warning("round %d: site %s left out: %s", rnd, site, excluded[site])
            continue
        bytes_up[site] = reply.nbytes if strategy.counts_bytes else 0
        replies[site] = reply
    if len(replies) < min_sites:
        reasons = "; ".join(f"{site}: {reason}" for site, reason in excluded.items())
        raise FederationError(f"round {rnd}: only {len(replies)} of {len(sites)} sites answered "
                              f"(min_sites={min_sites}): {reasons}.")
    set_determinism(seed=round_seed(config.seed, rnd, 10_000))
    info = strategy.aggregate(model, replies, rnd)
    model.cpu()
    return bytes_up, bytes_down, excluded, info
