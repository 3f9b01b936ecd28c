"""What a server's request carries besides the model: the task, the settings every site reads, and the knobs of
distillation federation. Shared by both sides; imports no site data and no model code.

A request is ``(task, outgoing payload, settings)``; :func:`site_request` builds the settings every task reads
(the training config, the model's config, the round's seed) and :func:`round_seed` the seed of each participant in
each round, so that the simulator and a Flower federation send the same requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from gliofed.errors import ConfigError
from gliofed.federated.protocol.payload import Payload
from gliofed.vocab import DISTILL_INITS

if TYPE_CHECKING:
    from gliofed.config import TrainConfig

__all__ = ["Request", "DistillSettings", "MAX_PAYLOAD_BYTES", "SERVER_INDEX", "round_seed",
           "site_request"]

#: largest reply (bytes on the wire) a server accepts by default
MAX_PAYLOAD_BYTES = 256 * 2**20
#: the participant index whose :func:`round_seed` seeds the server's own aggregation
SERVER_INDEX = 10_000


class Request(NamedTuple):
    """What the server sends one participant in one round."""

    task: str
    payload: Payload
    settings: dict


def round_seed(seed: int, rnd: int, index: int) -> int:
    """The seed of participant number ``index`` (sites sorted by name) in round ``rnd``; index
    :data:`SERVER_INDEX` is the server."""
    return int(seed) * 1_000_003 + rnd * 1_009 + index


def site_request(config: TrainConfig, model, seed: int, task: str, outgoing: Payload,
                 extra: dict | None = None) -> Request:
    """One request to a site: the task, the outgoing payload and the settings every site reads (``train``: the
    training config, ``model_config``: the network's ``config``, ``seed``: see :func:`round_seed`) plus the
    strategy's ``extra``."""
    return Request(task, outgoing, {"train": config.to_dict(), "model_config": model.config, "seed": seed,
                                    **(extra or {})})


@dataclass
class DistillSettings:
    """Knobs of distillation federation (site and server side). How the defaults were chosen, with the seeds they were
    chosen on, is in ``benchmarks/RESULTS.md``.

    Attributes:
        n_synthetic: synthetic volumes per site (default 3).
        scale: down-sampling factor of the stored synthetic volumes in every axis (default 4).
        steps: condensation optimisation steps per round (default 30).
        lr: condensation learning rate on synthetic voxels (default 0.05, Adam).
        real_batch: real cases (at most) whose class means are the matching targets and whose BatchNorm
            statistics are uploaded (default 32).
        perturb: relative std of the weight noise of the perturbed model copies (default 0.02).
        models: model copies matched against, the global model and ``models - 1`` perturbed ones (default 2).
        init: ``"class_stats"`` (default), ``"noise"``, or ``"real_unsafe"`` (teaching only; flagged by the audit).
        temperature: tau of the soft labels and of the server's KL term (default 2.0).
        kl_weight: lambda of the server's symmetric KL term (default 0.25). The soft labels are the *global*
            model's answers on the sites' real cases, so the KL pulls the server towards what the model already
            does: where it does not yet separate a marker's classes, a large weight holds the head there.
        server_epochs: server passes over the union of synthetic sets per round (default 10).
        server_lr: server learning rate (default 3e-4, AdamW). Adam moves every weight by about ``server_lr`` per
            step and the server takes 50-100 steps a round on a few dozen synthetic volumes, so a larger rate lets
            the encoder drift away from the BatchNorm statistics measured before those steps.
        memory_rounds: earlier rounds whose synthetic sets the server keeps training on (default 4; 0 = none).
        freeze_bn: train with the sites' real BatchNorm statistics frozen (default True).
    """

    n_synthetic: int = 3
    scale: int = 4
    steps: int = 30
    lr: float = 0.05
    real_batch: int = 32
    perturb: float = 0.02
    models: int = 2
    init: str = "class_stats"
    temperature: float = 2.0
    kl_weight: float = 0.25
    server_epochs: int = 10
    server_lr: float = 3e-4
    memory_rounds: int = 4
    freeze_bn: bool = True

    def __post_init__(self) -> None:
        if self.init not in DISTILL_INITS:
            raise ConfigError(f"distillation init {self.init!r} is not 'noise', 'class_stats' or 'real_unsafe'.")
        if self.n_synthetic < 1 or self.scale < 1 or self.steps < 0 or self.real_batch < 1 or self.models < 1:
            raise ConfigError("n_synthetic, scale, real_batch and models must be >= 1 and steps >= 0.")
        if self.memory_rounds < 0:
            raise ConfigError(f"memory_rounds {self.memory_rounds} must be >= 0.")
