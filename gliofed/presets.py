"""Presets: one named bundle of every setting a size of run needs — the synthetic cohort, the cache size, the
training recipe and the distillation effort. The only place presets live.

``paper`` is the seed study (its 1,552 subjects at 128 x 128, SGD lr 1e-3, 60 epochs); ``workshop`` a CPU demo
that learns in minutes; ``tiny`` CI-sized (seconds).

>>> get_preset("tiny").cache_size
32
>>> get_preset("workshop").train.optimizer
'adamw'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gliofed.config import TrainConfig
from gliofed.errors import ConfigError

__all__ = ["CohortPreset", "Preset", "PRESETS", "COHORT_FILE", "cohort_preset", "get_preset", "train_preset"]


@dataclass(frozen=True)
class CohortPreset:
    """Size of a generated synthetic cohort (:func:`gliofed.data.synth.make_cohort`).

    Attributes:
        name: preset name.
        cases_per_site: subjects per site; ``None`` = each site's ``n_cases`` (the seed's sizes).
        inplane: in-plane matrix (x, y) of the stored volumes.
        thickness_factor: multiplies each site's slice thickness (coarser, faster volumes).
        min_slices: lower bound on the slice count.
        cache_size: in-plane size the notebooks preprocess this preset to.
    """

    name: str
    cases_per_site: int | None
    inplane: tuple[int, int]
    thickness_factor: float
    min_slices: int
    cache_size: int


@dataclass(frozen=True)
class Preset:
    """Everything a run of one size needs.

    Attributes:
        name: preset name.
        cohort: the synthetic cohort's size (:class:`CohortPreset`).
        train: the training recipe (:class:`~gliofed.config.TrainConfig`).
        distill: overrides of :class:`~gliofed.federated.protocol.DistillSettings` (condensation effort).
    """

    name: str
    cohort: CohortPreset
    train: TrainConfig
    distill: dict = field(default_factory=dict)

    @property
    def cache_size(self) -> int:
        """In-plane size this preset's cohort is preprocessed to."""
        return self.cohort.cache_size


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny", CohortPreset("tiny", 4, (40, 46), 10.0, 8, 32),
        TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=3e-3, augment=False, lr_schedule="poly"),
        {"steps": 2, "server_epochs": 2}),
    "workshop": Preset(
        "workshop", CohortPreset("workshop", 24, (80, 96), 6.0, 10, 48),
        TrainConfig(epochs=12, batch_size=4, optimizer="adamw", lr=3e-3, weight_decay=1e-4, lr_schedule="poly"),
        {"steps": 5, "server_epochs": 10, "real_batch": 12}),  # real_batch: cases whose class means are the targets
    "paper": Preset("paper", CohortPreset("paper", None, (128, 128), 1.0, 24, 128), TrainConfig(), {}),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a :class:`~gliofed.errors.ConfigError`, never a fallback."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]


#: written by ``make_cohort`` beside a synthetic cohort's manifest: the preset (and seed) it was generated with
COHORT_FILE = "cohort.json"


#: a cohort.json is a few hundred bytes; anything far larger is not one
_COHORT_FILE_LIMIT = 64 * 1024


def cohort_preset(manifest: str | Path) -> str | None:
    """The preset a synthetic cohort was generated with (``cohort.json`` beside ``manifest``), or None where the
    manifest has no such file (a real dataset). A file that is not a small JSON object naming a known preset is a
    :class:`~gliofed.errors.ConfigError` naming the file."""
    path = Path(manifest).parent / COHORT_FILE
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > _COHORT_FILE_LIMIT:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is too large for a cohort file "
                              f"(at most {_COHORT_FILE_LIMIT:,}).")
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ConfigError(f"{path}: not a readable JSON file ({type(error).__name__}: {str(error)[:200]}).") from error
    if not isinstance(record, dict):
        raise ConfigError(f"{path}: not a JSON object (found {type(record).__name__}).")
    name = record.get("preset")
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"{path}: 'preset' must be one of {', '.join(PRESETS)}, not {repr(name)[:60]}.")
    return name


def train_preset(name: str, **overrides) -> TrainConfig:
    """A copy of preset ``name``'s training recipe with ``overrides`` applied."""
    return get_preset(name).train.replace(**overrides)
