"""Typed training configuration: the seed's recipe as the default (smaller recipes live in :mod:`gliofed.presets`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from gliofed.errors import ConfigError
from gliofed.fileio import atomic_write_text, to_json
from gliofed.vocab import MODALITIES

__all__ = ["TrainConfig", "LR_SCHEDULES", "read_config_file"]

#: learning-rate schedules (see :attr:`TrainConfig.lr_schedule`)
LR_SCHEDULES = ("constant", "poly", "cosine")
#: a training config file is a few hundred bytes; anything far larger is not one
_CONFIG_FILE_LIMIT = 256 * 1024


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
            but not bit-identical to single ones, so the CPU scores one case at a time, as it always has).
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
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.num_workers < 0:
            raise ConfigError("epochs must be >= 0, batch_size >= 1, lr > 0 and num_workers >= 0.")
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
        """A whole config from a JSON or TOML file (:func:`read_config_file`); unset fields keep the defaults."""
        return cls(**read_config_file(path))


def _toml_loads(text: str):
    """TOML with the standard library (Python 3.11+) or ``tomli`` (its backport, a dependency on 3.10)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading a TOML file needs Python 3.11 or the tomli package (pip install tomli); "
                              "or write the settings as JSON.") from None
    return tomllib.loads(text)


#: the Python types a setting's annotation names (a setting may take more than one, e.g. ``compile: bool | str``)
_ANNOTATED = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def _accepts(kind: type, value) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):
        return isinstance(value, kind) and not isinstance(value, bool)
    if kind is tuple:
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)


def _type_problem(name: str, value, default, annotation: str = "") -> str | None:
    """Why ``value`` cannot be the setting ``name`` whose default is ``default`` and whose annotation is
    ``annotation`` (every simple type it names is accepted, e.g. ``int | str``); None when it can."""
    named = [part.strip() for part in str(annotation).split("|") if part.strip() in _ANNOTATED]
    kinds = [kind for part in named for kind in _ANNOTATED[part]]
    if not kinds:
        kinds = [type(default) if isinstance(default, bool | int | float | str | tuple) else dict]
        named = ["a list" if kinds[0] is tuple else kinds[0].__name__]
    if any(_accepts(kind, value) for kind in kinds):
        return None
    return f"{name} must be {' or '.join(named)}, not {value!r}"


def read_config_file(path: str | Path) -> dict:
    """The training settings of a JSON (``.json``) or TOML (``.toml``) file: any subset of :class:`TrainConfig`'s
    fields (TOML keys may be written kebab-case, ``batch-size``), checked for names and types.

    Args:
        path: the file.

    Returns:
        ``{field: value}`` (lists of contrasts as tuples), ready for ``TrainConfig.replace(**values)``.

    Raises:
        ConfigError: a missing or unreadable file, another suffix, an unknown setting or a value of the wrong type,
            in one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found.")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(f"{path}: a config file must be .json or .toml, not {suffix or 'without a suffix'}.")
    if path.stat().st_size > _CONFIG_FILE_LIMIT:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is too large for a config file.")
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if suffix == ".json" else _toml_loads(text)
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ConfigError(f"{path}: not a readable {suffix[1:].upper()} file "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:160]}).") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the settings must be a {suffix[1:].upper()} table of names and values.")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    defaults = TrainConfig()
    annotations = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    known = set(annotations)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown training setting(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known))}.")
    for name, value in values.items():
        problem = _type_problem(name, value, getattr(defaults, name), annotations[name])
        if problem:
            raise ConfigError(f"{path}: {problem}.")
    if "modalities" in values:
        values["modalities"] = tuple(values["modalities"])
    try:
        defaults.replace(**values)  # the config's own checks (optimizer, ranges, contrasts)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return values
