"""The one round loop of every federation, whatever carries the payloads.

A :class:`~gliofed.federated.server.strategies.Strategy` configures a round (one request per participant) and
aggregates the validated replies, as Flower's ``Strategy`` does; :func:`federated_round` plays one round through an
:data:`Exchange` (the transport), and :func:`run_rounds` plays them all, recording each. The in-process simulator
(:mod:`gliofed.federated.simulate`) and the Flower ServerApp (:mod:`gliofed.federated.server.server_app`) differ only
in the transport they pass and in what they do after each round.

Server side: no import path to a site's cases (tested).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
from monai.utils import set_determinism
from torch import nn
from tqdm.auto import tqdm

from gliofed.errors import PayloadError
from gliofed.federated.protocol import (
    MAX_PAYLOAD_BYTES,
    Payload,
    Request,
    round_seed,
    site_request,
    state_to_arrays,
    validate_reply,
)
from gliofed.federated.protocol.payload import SITE_METRICS
from gliofed.federated.protocol.settings import SERVER_INDEX
from gliofed.fileio import to_json
from gliofed.vocab import REPLY_KINDS

if TYPE_CHECKING:
    from gliofed.config import TrainConfig
    from gliofed.federated.server.strategies import Strategy

__all__ = ["Exchange", "RoundResult", "History", "SiteFailure", "federated_round", "federated_evaluation", "run_rounds",
           "one_line", "check_reply", "EVALUATION_INDEX"]

#: the participant index offset of the seeds of federated evaluation requests (apart from the training requests')
EVALUATION_INDEX = 20_000

log = logging.getLogger("gliofed.federated")

#: ``{participant: request}`` -> ``{participant: reply payload, or the exception that stopped it}``
Exchange = Callable[[dict[str, Request]], dict[str, "Payload | BaseException"]]

#: longest skip reason kept (characters)
MAX_REASON = 300


@dataclass
class RoundResult:
    """What one round did, per site: bytes up and down, the sites left out (site -> one-line reason), and the
    strategy's own information for the history (losses ...)."""

    bytes_up: dict[str, int]
    bytes_down: dict[str, int]
    excluded: dict[str, str]
    info: dict

    def record(self) -> dict:
        """The round's entries of a history record (plain JSON types)."""
        return {"bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "excluded": self.excluded,
                "info": json.loads(to_json(self.info))}


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


def federated_round(strategy: Strategy, model: nn.Module, rnd: int, sites: Sequence[str], config: TrainConfig,
                    exchange: Exchange, min_sites: int = 1,
                    max_payload_bytes: int | None = MAX_PAYLOAD_BYTES, rounds: int | None = None) -> RoundResult:
    """One round: the strategy's requests (:meth:`Strategy.configure_round`) go out through ``exchange``, every
    reply is validated (:func:`check_reply`), the strategy checks who answered (:meth:`Strategy.check_answers`) and
    aggregates the valid replies into ``model`` (:meth:`Strategy.aggregate`).

    A participant whose reply fails (error, refusal, no answer, or a reply that :func:`check_reply` refuses) is left
    out of the round with a one-line reason (:func:`one_line`); whether the round goes on without it is the
    strategy's rule (default: at least ``min_sites`` valid replies, else :class:`FederationError`).

    With ``rounds`` (the run's last round), every ``train`` request also carries ``schedule``: ``{"round": rnd,
    "rounds": rounds}``, where the round stands in the run, so that a site's learning rate follows the run's
    schedule (``TrainConfig.lr_schedule``) across rounds.
    """
    model.cpu()
    requests = strategy.configure_round(model, rnd, list(sites), config)
    if rounds is not None:
        for request in requests.values():
            if request.task == "train":
                request.settings["schedule"] = {"round": int(rnd), "rounds": int(rounds)}
    replies, excluded = _validated_answers(requests, exchange(requests), max_payload_bytes, rnd, "left out")
    strategy.check_answers(rnd, requests, replies, excluded, min_sites)
    bytes_up, bytes_down = strategy.traffic(list(sites), requests, replies)
    set_determinism(seed=round_seed(config.seed, rnd, SERVER_INDEX))
    info = strategy.aggregate(model, replies, rnd)
    model.cpu()
    return RoundResult(bytes_up, bytes_down, excluded, info)


def _validated_answers(requests: dict[str, Request], answers: dict, max_payload_bytes: int | None, rnd: int,
                       outcome: str) -> tuple[dict[str, Payload], dict[str, str]]:
    """(replies that passed :func:`check_reply` against their request, site -> the one-line reason of each that did
    not: an exception it raised, no answer, a reply failing validation); each failure is logged as ``round N: site S
    <outcome>: reason``."""
    replies, excluded = {}, {}
    for site, request in requests.items():
        reply = answers.get(site, TimeoutError("no reply"))
        try:
            if isinstance(reply, BaseException):
                raise reply
            check_reply(site, reply, request.task, request.payload, max_payload_bytes)
        except Exception as error:  # this site is left out of what follows, with its reason
            excluded[site] = one_line(error)
            log.warning("round %d: site %s %s: %s", rnd, site, outcome, excluded[site])
            continue
        replies[site] = reply
    return replies, excluded


def federated_evaluation(strategy: Strategy, model: nn.Module, rnd: int, sites: Sequence[str], config: TrainConfig,
                         exchange: Exchange, max_payload_bytes: int | None = MAX_PAYLOAD_BYTES) -> dict:
    """Federated evaluation after round ``rnd``: the global model goes to every site with the task ``evaluate``; each
    answers with its ``site_metrics`` (the model's quick metrics on its own held-out cases, and how many there were),
    validated like every reply (:func:`check_reply`). No case, prediction or per-case score reaches the server.

    Returns:
        the entries of the round's record: ``site_metrics`` (site -> its metrics and ``n_cases``), ``metrics`` (each
        metric's mean over the sites that report it, weighted by their held-out cases) and ``evaluation_excluded``
        (site -> the one-line reason it reported nothing: a refusal, e.g. too few held-out cases, an error, a reply
        that failed validation).
    """
    model.cpu()
    outgoing = Payload("model", state_to_arrays(model), {"round": rnd, "strategy": strategy.name})
    requests = {site: site_request(config, model, round_seed(config.seed, rnd, EVALUATION_INDEX + index), "evaluate",
                                   outgoing) for index, site in enumerate(sites)}
    replies, excluded = _validated_answers(requests, exchange(requests), max_payload_bytes, rnd,
                                           "reported no evaluation")
    site_metrics = {site: {**reply.meta["metrics"], "n_cases": int(reply.meta["n_cases"])}
                    for site, reply in replies.items()}
    pooled = {}
    for name in SITE_METRICS:
        reported = [(m[name], m["n_cases"]) for m in site_metrics.values() if m.get(name) is not None]
        weight = sum(n for _, n in reported)
        pooled[name] = sum(v * n for v, n in reported) / weight if weight else None
    return {"metrics": pooled, "site_metrics": site_metrics, "evaluation_excluded": excluded}


def run_rounds(strategy: Strategy, model: nn.Module, sites: Sequence[str], config: TrainConfig,
               transport: Callable[[int], Exchange], rounds: int, start_round: int = 1,
               history: list[dict] | None = None, min_sites: int = 1,
               max_payload_bytes: int | None = MAX_PAYLOAD_BYTES,
               evaluate: Callable[[int, nn.Module], dict] | None = None,
               after_round: Callable[[int, list[dict]], None] | None = None, progress: bool = False) -> list[dict]:
    """Play rounds ``start_round`` .. ``rounds`` of ``strategy`` over ``sites`` (:func:`federated_round` each) and
    record them.

    Args:
        strategy, model, sites, config: as :func:`federated_round`; ``model`` is updated in place.
        transport: round number -> the :data:`Exchange` that carries that round's requests.
        rounds: the last round.
        start_round: the first round to play (a resumed run continues after its saved round).
        history: the records of earlier rounds (extended in place; default a new list).
        min_sites, max_payload_bytes: see :func:`federated_round`.
        evaluate: ``(round, model) -> entries`` added to the round's record before its bytes (the simulator's test
            metrics); the round's ``wall_s`` includes it.
        after_round: ``(round, history)`` after each round is recorded (saving state, writing history files).
        progress: show a progress bar (with the round's WT Dice and IDH AUC where ``evaluate`` gives them).

    Returns:
        ``history``: one record per round, ``{"round", "wall_s", <evaluate's entries>, "bytes_up", "bytes_down",
        "excluded", "info"}``.
    """
    history = [] if history is None else history
    bar = tqdm(range(start_round, rounds + 1), desc=strategy.name, unit="round", disable=not progress)
    for rnd in bar:
        started = time.perf_counter()
        result = federated_round(strategy, model, rnd, sites, config, transport(rnd), min_sites=min_sites,
                                 max_payload_bytes=max_payload_bytes, rounds=rounds)
        entries = evaluate(rnd, model) if evaluate is not None else {}
        history.append({"round": rnd, "wall_s": time.perf_counter() - started, **entries, **result.record()})
        metrics = entries.get("metrics") or {}
        shown = {k: float("nan") if metrics.get(k) is None else metrics[k] for k in ("dice_WT", "auc_idh")}
        bar.set_postfix(dice_WT=f"{shown['dice_WT']:.2f}", auc_idh=f"{shown['auc_idh']:.2f}")
        if after_round is not None:
            after_round(rnd, history)
    return history


@dataclass
class History:
    """Per-round record of a federation (:func:`run_rounds`).

    Each round: ``round``, ``wall_s``, ``metrics`` (test metrics of the global model, or the mean over
    site models for local-only), ``site_metrics`` (per site: metrics on that site's test cases; for
    local-only, each site model on the whole test split), ``bytes_up`` / ``bytes_down`` per site,
    ``excluded`` (site -> reason) and ``info`` (strategy-specific, e.g. losses).
    """

    strategy: str
    rounds: list[dict] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row per round: round, wall time, total bytes up/down, and every global metric."""
        rows = []
        for r in self.rounds:
            rows.append({"strategy": self.strategy, "round": r["round"], "wall_s": r["wall_s"],
                         "bytes_up": sum(r["bytes_up"].values()), "bytes_down": sum(r["bytes_down"].values()),
                         "sites_answered": len(r["bytes_up"]) - len(r["excluded"]), **r["metrics"]})
        return pd.DataFrame(rows)

    def site_frame(self) -> pd.DataFrame:
        """One row per (round, site): bytes and that site's metrics."""
        rows = []
        for r in self.rounds:
            for site in sorted(set(r["bytes_up"]) | set(r["site_metrics"])):
                rows.append({"strategy": self.strategy, "round": r["round"], "site": site,
                             "bytes_up": r["bytes_up"].get(site, 0), "bytes_down": r["bytes_down"].get(site, 0),
                             "excluded": r["excluded"].get(site, ""), **r["site_metrics"].get(site, {})})
        return pd.DataFrame(rows)
