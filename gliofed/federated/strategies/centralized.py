"""Centralized baseline: all sites' training cases pooled in one place — the privacy-violating upper bound.

This is not federated learning. Its round hook asks every site how large its cached training cases are
(what pooling transfers, counted once, in round 1) and lets one data centre, a participant holding every
site's training cases (:data:`POOLED`), train the model; the server only copies the result.
"""

from __future__ import annotations

from torch import nn

from gliofed.federated.payload import Payload, validate
from gliofed.federated.strategies.base import FederationError, Strategy

__all__ = ["Centralized", "POOLED"]

#: name of the participant that holds every site's training cases
POOLED = "pooled"


class Centralized(Strategy):
    """Pooled training; ``local_epochs`` = epochs over the pooled data per round.

    Args:
        local_epochs: epochs per round (default 1).
    """

    name = "centralized"
    task = "train"
    counts_bytes = False

    def participants(self, sites: list[str]) -> dict[str, list[str]]:
        return {**super().participants(sites), POOLED: list(sites)}

    def run_round(self, model, rnd, sites, config, exchange, min_sites=1, max_payload_bytes=None):
        from gliofed.federated.rounds import round_seed, site_request

        members = [site for site in sites if site != POOLED]
        bytes_up = dict.fromkeys(members, 0)
        if rnd == 1:  # pooling moves each site's cached training cases once
            asked = {site: ("describe", Payload("nothing", {}, {"site": site}), {}) for site in members}
            for site, answer in exchange(asked).items():
                if isinstance(answer, BaseException):
                    raise FederationError(f"site {site} could not describe its cases: {answer}")
                bytes_up[site] = int(answer.meta["raw_bytes"])
        request = site_request(config, model, round_seed(config.seed, rnd, 0), self.task,
                               self.broadcast(POOLED, model, rnd), self.site_settings(rnd))
        answer = exchange({POOLED: request})[POOLED]
        if isinstance(answer, BaseException):
            raise FederationError(f"round {rnd}: pooled training failed: {answer}")
        validate(answer, max_payload_bytes)
        self.load(model, answer.arrays)
        return bytes_up, dict.fromkeys(members, 0), {}, {"loss": answer.meta.get("loss", float("nan"))}

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        return {}
