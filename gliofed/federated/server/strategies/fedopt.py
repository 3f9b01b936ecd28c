"""Server optimizers on FedAvg's average: FedAvgM (Hsu et al. 2019) and FedAdam (Reddi et al., ICLR 2021).

Flower's ``FedAvgM`` and ``FedAdam`` strategies are the reference definitions. Each round the sites train as in
FedAvg and the server forms FedAvg's average (with its partial-label weights); then, instead of taking the
average as the new model, it treats the difference as a gradient of the global model and steps an optimizer:

- **FedAvgM**: pseudo-gradient ``g = w - average``; momentum ``m = beta * m + g`` (``m = g`` in the first round);
  ``w <- w - server_lr * m``. With ``server_lr = 1`` and ``beta = 0`` this is FedAvg.
- **FedAdam**: ``delta = average - w``; ``m = beta1 * m + (1 - beta1) * delta``,
  ``v = beta2 * v + (1 - beta2) * delta**2``; ``w <- w + server_lr * m_hat / (sqrt(v_hat) + tau)`` with Adam's
  bias corrections ``m_hat = m / (1 - beta1**t)``, ``v_hat = v / (1 - beta2**t)`` after ``t`` server steps
  (Flower folds the corrections into the step size with exponent ``round + 1``; here ``t`` counts the steps taken).

The optimizer moves the network's **parameters** only. BatchNorm running statistics and step counters are buffers,
not trained by gradients: they take FedAvg's average, as in FedAvg. The optimizer state (m, v, t) is part of the
strategy's checkpoint, so a resumed run continues it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from gliofed.errors import ConfigError
from gliofed.federated.protocol import Payload
from gliofed.federated.server.strategies.fedavg import FedAvg

__all__ = ["FedAvgM", "FedAdam"]


class _ServerOptimized(FedAvg):
    """FedAvg whose average is turned into a server optimizer step on the parameters (subclasses: :meth:`step`)."""

    def __init__(self, local_epochs: int = 1, server_lr: float = 1.0, partial_weights: bool = True,
                 **options) -> None:
        super().__init__(local_epochs, partial_weights, **options)
        if not (isinstance(server_lr, (int, float)) and math.isfinite(server_lr) and server_lr > 0):
            raise ConfigError(f"server learning rate {server_lr!r} must be a positive number.")
        self.server_lr = float(server_lr)
        self.steps = 0

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        before = {name: p.detach().cpu().numpy().astype(np.float64) for name, p in model.named_parameters()}
        info = super().aggregate(model, replies, rnd)  # the model now holds FedAvg's average
        self.steps += 1
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                average = parameter.detach().cpu().numpy().astype(np.float64)
                stepped = self.step(name, before[name], average)
                parameter.copy_(torch.from_numpy(stepped).to(parameter.dtype))
        return info

    def step(self, name: str, weights: np.ndarray, average: np.ndarray) -> np.ndarray:
        """The new value of parameter ``name`` from its value before the round and the sites' average."""
        raise NotImplementedError


class FedAvgM(_ServerOptimized):
    """FedAvg with server momentum.

    Args:
        local_epochs: local epochs per round (default 1).
        server_lr: server learning rate (default 1.0).
        momentum: server momentum beta (default 0.9).
        partial_weights, options: as :class:`FedAvg`.
    """

    name = "fedavgm"

    def __init__(self, local_epochs: int = 1, server_lr: float = 1.0, momentum: float = 0.9,
                 partial_weights: bool = True, **options) -> None:
        super().__init__(local_epochs, server_lr, partial_weights, **options)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"server momentum {momentum!r} must be in [0, 1).")
        self.momentum = float(momentum)
        self.velocity: dict[str, np.ndarray] = {}

    def options(self) -> dict:
        return {**super().options(), "server_lr": self.server_lr, "momentum": self.momentum}

    def step(self, name: str, weights: np.ndarray, average: np.ndarray) -> np.ndarray:
        gradient = weights - average
        velocity = self.momentum * self.velocity[name] + gradient if name in self.velocity else gradient
        self.velocity[name] = velocity
        return weights - self.server_lr * velocity

    def state_dict(self) -> dict:
        return {"velocity": dict(self.velocity), "steps": self.steps}  # float64: a resumed run continues exactly

    def load_state_dict(self, state: dict) -> None:
        self.velocity = {k: np.asarray(v, np.float64) for k, v in (state.get("velocity") or {}).items()}
        self.steps = int(state.get("steps", 0))


class FedAdam(_ServerOptimized):
    """FedAvg with an Adam server optimizer.

    Args:
        local_epochs: local epochs per round (default 1).
        server_lr: server learning rate eta (default 1e-3: Adam moves every parameter by about this much per round).
        beta1, beta2: Adam's decay rates (default 0.9, 0.99, Flower's).
        tau: the adaptivity floor added to ``sqrt(v_hat)`` (default 1e-9, Flower's).
        partial_weights, options: as :class:`FedAvg`.
    """

    name = "fedadam"

    def __init__(self, local_epochs: int = 1, server_lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-9, partial_weights: bool = True, **options) -> None:
        super().__init__(local_epochs, server_lr, partial_weights, **options)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0 and tau > 0):
            raise ConfigError(f"FedAdam needs 0 <= beta1, beta2 < 1 and tau > 0 (got {beta1}, {beta2}, {tau}).")
        self.beta1, self.beta2, self.tau = float(beta1), float(beta2), float(tau)
        self.first: dict[str, np.ndarray] = {}
        self.second: dict[str, np.ndarray] = {}

    def options(self) -> dict:
        return {**super().options(), "server_lr": self.server_lr, "beta1": self.beta1, "beta2": self.beta2,
                "tau": self.tau}

    def step(self, name: str, weights: np.ndarray, average: np.ndarray) -> np.ndarray:
        delta = average - weights
        first = self.beta1 * self.first.get(name, np.zeros_like(delta)) + (1 - self.beta1) * delta
        second = self.beta2 * self.second.get(name, np.zeros_like(delta)) + (1 - self.beta2) * delta**2
        self.first[name], self.second[name] = first, second
        first_hat = first / (1 - self.beta1**self.steps)
        second_hat = second / (1 - self.beta2**self.steps)
        return weights + self.server_lr * first_hat / (np.sqrt(second_hat) + self.tau)

    def state_dict(self) -> dict:
        return {"first": dict(self.first), "second": dict(self.second), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.first = {k: np.asarray(v, np.float64) for k, v in (state.get("first") or {}).items()}
        self.second = {k: np.asarray(v, np.float64) for k, v in (state.get("second") or {}).items()}
        self.steps = int(state.get("steps", 0))
