"""Centralized baseline: all sites' training cases pooled in one place — the privacy-violating upper bound.

This is not federated learning. In round 1 it asks every site how large its cached training cases are (what pooling
transfers, counted once) and, every round, lets one data centre, a participant holding every site's training cases
(:data:`POOLED`), train the model; the server only copies the result. Every participant must answer: a site that
cannot describe its cases, or a data centre that fails, stops the run.
"""

from __future__ import annotations

from torch import nn

from gliofed.config import TrainConfig
from gliofed.errors import FederationError
from gliofed.federated.protocol import Payload, Request, round_seed, site_request
from gliofed.federated.server.strategies.base import Strategy

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

    def configure_round(self, model: nn.Module, rnd: int, sites: list[str], config: TrainConfig) -> dict[str, Request]:
        requests = {}
        if rnd == 1:  # pooling moves each site's cached training cases once: ask their size
            requests = {site: Request("describe", Payload("nothing", {}, {"site": site}), {})
                        for site in sites if site != POOLED}
        requests[POOLED] = site_request(config, model, round_seed(config.seed, rnd, 0), self.task,
                                        self.broadcast(POOLED, model, rnd), self.site_settings(rnd))
        return requests

    def check_answers(self, rnd: int, requests: dict[str, Request], replies: dict[str, Payload],
                      excluded: dict[str, str], min_sites: int) -> None:
        for site, reason in excluded.items():
            if site == POOLED:
                raise FederationError(f"round {rnd}: pooled training failed: {reason}")
            raise FederationError(f"site {site} could not describe its cases: {reason}")

    def traffic(self, sites: list[str], requests: dict[str, Request],
                replies: dict[str, Payload]) -> tuple[dict[str, int], dict[str, int]]:
        members = [site for site in sites if site != POOLED]
        up = {site: int(replies[site].meta["raw_bytes"]) if site in replies else 0 for site in members}
        return up, dict.fromkeys(members, 0)

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        pooled = replies[POOLED]
        self.load(model, pooled.arrays)
        return {"loss": pooled.meta.get("loss", float("nan"))}
