"""Checkpoints: model weights, model and training config, optimiser state, epoch and extras (e.g. history).

Kept apart from the engine so the Flower ServerApp can save models without any path to site data.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gliofed.config import TrainConfig
from gliofed.errors import ConfigError
from gliofed.model import MultiTaskUNet, build_model

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: TrainConfig,
                    optimizer: torch.optim.Optimizer | None = None, epoch: int = 0, extra: dict | None = None) -> Path:
    """Save model weights, model and training config, optimiser state, epoch and ``extra`` (e.g. history)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": getattr(model, "config", {}),
        "train_config": config.to_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[MultiTaskUNet, TrainConfig, dict]:
    """Load a checkpoint; return (model with weights, training config, the whole checkpoint dict)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found.")
    state = torch.load(path, map_location=device, weights_only=False)
    config = TrainConfig.from_dict(state["train_config"])
    model = MultiTaskUNet(**state["model_config"]) if state.get("model_config") else build_model(config)
    model.load_state_dict(state["model"])
    return model, config, state
