"""Local-only baseline: every site trains its own model on its own cases; nothing is shared."""

from __future__ import annotations

import numpy as np
from torch import nn

from gliofed.federated.protocol import Payload, state_to_arrays
from gliofed.federated.server.strategies.base import Strategy

__all__ = ["LocalOnly"]


class LocalOnly(Strategy):
    """One model per site, each continuing from its own weights every round. The weights come back to the
    simulator only so that each site model can be scored on the common test split; in a real deployment
    each site would evaluate its own model, so no bytes are counted.

    Args:
        local_epochs: epochs per round (default 1).
    """

    name = "local"
    task = "train"
    counts_bytes = False
    evaluate_each_round = False  # five models to score: only after the last round

    def __init__(self, local_epochs: int = 1) -> None:
        super().__init__(local_epochs)
        self.site_models: dict[str, dict[str, np.ndarray]] = {}

    def broadcast(self, site: str, model: nn.Module, rnd: int) -> Payload:
        arrays = self.site_models.get(site) or state_to_arrays(model)
        return Payload("model", arrays, {"round": rnd, "strategy": self.name})

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        for site, payload in replies.items():
            self.site_models[site] = payload.arrays
        return {"site_loss": {site: p.meta.get("loss") for site, p in replies.items()}}

    def models_to_evaluate(self, model: nn.Module) -> dict[str, dict[str, np.ndarray]]:
        return dict(sorted(self.site_models.items())) or {"global": state_to_arrays(model)}

    @classmethod
    def from_checkpoint(cls, path) -> LocalOnly:
        """The strategy (with every site's model) from a simulator run: its folder or its ``state.safetensors``."""
        from pathlib import Path

        from gliofed.runs import TrainingRun

        path = Path(path)
        strategy = cls()
        strategy.load_state_dict(TrainingRun(path if path.is_dir() else path.parent).load_state()["strategy"])
        return strategy

    def state_dict(self) -> dict:
        return {"site_models": self.site_models}

    def load_state_dict(self, state: dict) -> None:
        self.site_models = state.get("site_models", {})
