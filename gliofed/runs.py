"""A training run's folder, owned by this module alone: every file a run writes or reads goes through
:class:`TrainingRun`.

Layout of ``OUT/``::

    model.ckpt             final model: weights, model config, training config, epoch, extras (history, strategy)
    state.pt               after every round: round, model, strategy state, history, config (for --resume)
    config.json            the training config, readable
    history.csv            one row per round (bytes, wall time, test metrics)
    history_sites.csv      one row per round and site
    history.json           per-round records of a Flower run
    predictions_test.csv   the last round's test predictions of every evaluated model (column ``model``)

Kept apart from the engine so that the Flower ServerApp can save models without any path to site data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from gliofed.config import TrainConfig
from gliofed.errors import ConfigError
from gliofed.model import MultiTaskUNet, build_model

__all__ = ["TrainingRun", "save_checkpoint", "load_checkpoint"]


def _replace_atomically(path: Path, write) -> Path:
    """``write(tmp)`` then rename over ``path``: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
    return path


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: TrainConfig,
                    optimizer: torch.optim.Optimizer | None = None, epoch: int = 0, extra: dict | None = None) -> Path:
    """Save model weights, model and training config, optimiser state, epoch and ``extra`` (e.g. history)."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": getattr(model, "config", {}),
        "train_config": config.to_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "extra": extra or {},
    }
    return _replace_atomically(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[MultiTaskUNet, TrainConfig, dict]:
    """Load a checkpoint; return (model with weights, training config, the whole checkpoint dict)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found.")
    state = torch.load(path, map_location=device, weights_only=False)
    config = TrainConfig.from_dict(state["train_config"])
    model = build_model(state.get("model_config") or config)
    model.load_state_dict(state["model"])
    return model, config, state


class TrainingRun:
    """The folder of one training run (see the module docstring for its files).

    >>> run = TrainingRun("runs/fedavg")          # doctest: +SKIP
    >>> model, config, state = run.load_model()    # doctest: +SKIP
    """

    MODEL = "model.ckpt"
    STATE = "state.pt"
    CONFIG = "config.json"
    HISTORY = "history.csv"
    SITE_HISTORY = "history_sites.csv"
    ROUNDS = "history.json"
    PREDICTIONS = "predictions_test.csv"

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def __repr__(self) -> str:
        return f"TrainingRun({str(self.out_dir)!r})"

    def path(self, name: str) -> Path:
        """The path of one of the run's files (e.g. ``TrainingRun.MODEL``)."""
        return self.out_dir / name

    # the final model ------------------------------------------------------------------------------------------
    @property
    def has_model(self) -> bool:
        return self.path(self.MODEL).is_file()

    def save_model(self, model: torch.nn.Module, config: TrainConfig, epoch: int = 0, extra: dict | None = None,
                   optimizer: torch.optim.Optimizer | None = None) -> Path:
        """Write the final model (``model.ckpt``) with its configs, ``epoch`` and ``extra`` (e.g. history)."""
        return save_checkpoint(self.path(self.MODEL), model, config, optimizer, epoch, extra)

    def load_model(self, device: str = "cpu") -> tuple[MultiTaskUNet, TrainConfig, dict]:
        """(model with weights, training config, the whole checkpoint)."""
        return load_checkpoint(self.path(self.MODEL), device)

    # the round-by-round state -----------------------------------------------------------------------------------
    @property
    def has_state(self) -> bool:
        return self.path(self.STATE).is_file()

    def save_state(self, rnd: int, model: torch.nn.Module, strategy_state: dict, history: list[dict],
                   config: TrainConfig) -> Path:
        """Write what :meth:`load_state` needs to resume after round ``rnd``."""
        state = {"round": rnd, "model": model.state_dict(), "strategy": strategy_state, "history": history,
                 "config": config.to_dict()}
        return _replace_atomically(self.path(self.STATE), lambda tmp: torch.save(state, tmp))

    def load_state(self) -> dict:
        """The last saved round: ``round``, ``model`` (state dict), ``strategy``, ``history``, ``config``."""
        return torch.load(self.path(self.STATE), weights_only=False)

    # tables ---------------------------------------------------------------------------------------------------
    def save_config(self, config: TrainConfig) -> Path:
        text = json.dumps(config.to_dict(), indent=2)
        return _replace_atomically(self.path(self.CONFIG), lambda tmp: tmp.write_text(text))

    def save_history(self, history) -> None:
        """A simulator :class:`~gliofed.federated.simulate.History` as ``history.csv`` and ``history_sites.csv``."""
        for name, table in ((self.HISTORY, history.to_frame()), (self.SITE_HISTORY, history.site_frame())):
            _replace_atomically(self.path(name), lambda tmp, table=table: table.to_csv(tmp, index=False))

    def save_rounds(self, strategy: str, rounds: list[dict]) -> Path:
        """Per-round records as ``history.json`` (the Flower ServerApp writes it after every round)."""
        text = json.dumps({"strategy": strategy, "rounds": rounds}, indent=2, default=float)
        return _replace_atomically(self.path(self.ROUNDS), lambda tmp: tmp.write_text(text))

    def load_rounds(self) -> dict:
        return json.loads(self.path(self.ROUNDS).read_text())

    def save_predictions(self, predictions: pd.DataFrame) -> Path:
        """The last round's test predictions of every evaluated model (column ``model``)."""
        return _replace_atomically(self.path(self.PREDICTIONS), lambda tmp: predictions.to_csv(tmp, index=False))

    def load_predictions(self) -> pd.DataFrame | None:
        """The saved test predictions, or ``None`` when the run saved none."""
        path = self.path(self.PREDICTIONS)
        return pd.read_csv(path, dtype={"subject": str, "site": str}) if path.is_file() else None
