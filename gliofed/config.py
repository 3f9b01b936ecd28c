"""Typed training configuration: the seed's recipe as the default (smaller recipes live in :mod:`gliofed.presets`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from gliofed.errors import ConfigError
from gliofed.fileio import atomic_write_text, to_json
from gliofed.vocab import MODALITIES

__all__ = ["TrainConfig", "LR_SCHEDULES"]

#: learning-rate schedules (see :attr:`TrainConfig.lr_schedule`)
LR_SCHEDULES = ("constant", "poly", "cosine")


@dataclass
class TrainConfig:
    """How to train one model. The defaults are the seed study's recipe (SGD, lr 1e-3, 60 epochs).

    Attributes:
        epochs: passes over the training set (default 60).
        batch_size: cases per step (default 2).
        optimizer: ``"sgd"`` (default, momentum 0.9) or ``"adamw"``.
        lr: learning rate (default 1e-3). momentum, weight_decay: optimiser settings.
        lr_schedule: how the learning rate falls over the run: ``"constant"`` (default, the seed's), ``"poly"``
            (nnU-Net's ``lr * (1 - epoch / epochs) ** 0.9``) or ``"cosine"`` (``lr * (1 + cos(pi * epoch / epochs))
            / 2``), set at the start of every epoch; a federated run counts the epochs of all its rounds.
        amp: bf16 autocast on CUDA (default True; ignored on CPU).
        channels_last: channels_last_3d memory format on CUDA (default True).
        compile: ``torch.compile`` the model: ``"auto"`` (default: on CUDA only), True or False.
        cuda_graphs: compile in the ``reduce-overhead`` mode, which replays CUDA graphs (default False; CUDA only).
        seed: seeds weights, data order and augmentation; reproduces a run on the same device.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        num_workers: DataLoader worker processes (default 0); they persist across epochs.
        augment: flips + intensity augmentation (default True).
        augment_on: where the augmentation runs: ``"device"`` (batched on the training device, seeded per epoch),
            ``"loader"`` (MONAI's per-case pipeline in the DataLoader) or ``"auto"`` (default: ``"device"`` on CUDA,
            ``"loader"`` on the CPU, which keeps the numbers of earlier CPU runs).
        device_cache: keep every training case on the device: ``"on"``, ``"off"`` or ``"auto"`` (default: on CUDA
            when the cases take at most half the free device memory; never on the CPU).
        pad_depth: the depth of every batch: ``"batch"`` (its deepest case), an int (pad or centre-crop every case
            to it) or ``"auto"`` (default: on CUDA the cache's deepest case rounded up to ``depth_multiple``, one
            shape for the whole run, so that the compiled model and cuDNN's autotuner see one shape; on the CPU
            ``"batch"``).
        eval_batch: cases of one shape per forward pass when a run scores its model (per-round curves, final
            predictions): an int, or ``"auto"`` (default: 8 on CUDA; 1 on the CPU, where batched passes are faster
            but not bit-identical to single ones, so the CPU keeps the numbers of earlier versions).
        depth_multiple: rounding of the automatic fixed depth (default 1: the deepest case itself, no voxel of
            padding more than needed; e.g. 16 lets caches whose deepest cases differ a little share compiled code).
        modalities: input contrasts (default all four; see :data:`gliofed.data.MODALITY_SETS`).
        task_weights, class_weights, focal_gamma: passed to :class:`gliofed.losses.MultiTaskLoss`.
        model: keyword arguments of :class:`gliofed.model.MultiTaskUNet` (default: the seed's network).
    """

    epochs: int = 60
    batch_size: int = 2
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "constant"
    amp: bool = True
    channels_last: bool = True
    compile: bool | str = "auto"
    cuda_graphs: bool = False
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    augment: bool = True
    augment_on: str = "auto"
    device_cache: str = "auto"
    pad_depth: int | str = "auto"
    depth_multiple: int = 1
    eval_batch: int | str = "auto"
    modalities: tuple[str, ...] = MODALITIES
    task_weights: dict[str, float] = field(default_factory=dict)
    class_weights: dict[str, list[float]] = field(default_factory=dict)
    focal_gamma: float = 0.0
    model: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer {self.optimizer!r} is not 'sgd' or 'adamw'.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}.")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs must be >= 0, batch_size >= 1 and lr > 0.")
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f"compile {self.compile!r} is not true, false or 'auto'.")
        if self.augment_on not in ("auto", "device", "loader"):
            raise ConfigError(f"augment_on {self.augment_on!r} is not 'auto', 'device' or 'loader'.")
        if self.device_cache not in ("auto", "on", "off"):
            raise ConfigError(f"device_cache {self.device_cache!r} is not 'auto', 'on' or 'off'.")
        depth_ok = self.pad_depth in ("auto", "batch") or (isinstance(self.pad_depth, int)
                                                            and not isinstance(self.pad_depth, bool)
                                                            and self.pad_depth >= 1)
        if not depth_ok:
            raise ConfigError(f"pad_depth {self.pad_depth!r} is not 'auto', 'batch' or a depth of at least 1.")
        batch_ok = self.eval_batch == "auto" or (isinstance(self.eval_batch, int)
                                                 and not isinstance(self.eval_batch, bool) and self.eval_batch >= 1)
        if not batch_ok:
            raise ConfigError(f"eval_batch {self.eval_batch!r} is not 'auto' or a whole number of at least 1.")
        if isinstance(self.depth_multiple, bool) or not isinstance(self.depth_multiple, int) or self.depth_multiple < 1:
            raise ConfigError(f"depth_multiple {self.depth_multiple!r} is not a whole number of at least 1.")
        self.modalities = tuple(self.modalities)
        # a config read back from JSON has lists where it was written with tuples: keep equality across the trip
        self.model = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model.items()}
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ConfigError(f"modalities {list(self.modalities)} must be a non-empty subset of "
                              f"{', '.join(MODALITIES)}.")

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(sorted(unknown))}.")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, to_json(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
