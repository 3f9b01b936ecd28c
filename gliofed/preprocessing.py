"""The preprocessing record (nnU-Net calls it the *plan*): everything that decides what a model sees of a scan.

One :class:`Preprocessing` is made once, when a cache is preprocessed (:func:`gliofed.data.plan.plan_for_manifest`
decides its size), and then only read: the cache keeps it (``settings.json``), training copies it into the
checkpoint (``model.json``), and ``evaluate``, ``predict`` and both Flower apps read it back from there. The one
pipeline built from it (:func:`gliofed.data.transforms.plan_pipeline`) preprocesses for the cache and, inverted,
returns predictions to each scan's own grid. Where two records meet (a cache and a checkpoint, a SuperNode's cache and
its federation) they must agree: :meth:`Preprocessing.difference` names the first setting that differs, and every
caller turns it into a one-sentence error.

Standard library only: the Flower ServerApp reads it without any path to a site's data.

>>> plan = Preprocessing(size=48)
>>> plan.for_model(("t1", "flair")).modalities
('t1', 'flair')
>>> Preprocessing.from_dict(plan.to_dict()) == plan
True
>>> Preprocessing(size=48).difference(Preprocessing(size=32))
'48x48 in-plane (the other: 32x32)'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gliofed.errors import ConfigError
from gliofed.vocab import MODALITIES

__all__ = ["Preprocessing", "PREPROCESS_VERSION", "MAX_SIZE", "ORIENTATIONS", "CROPS", "NORMALISATIONS", "RESIZES",
           "plan_of"]

#: bump when the pipeline changes so that every cache entry is invalidated and old checkpoints are refused
#: (2: checksums, sizes and grid geometry in the cache index, settings.json)
PREPROCESS_VERSION = 2
#: largest in-plane size a record may ask for
MAX_SIZE = 2048
#: the settings the one pipeline implements (a record naming anything else is refused, never silently ignored)
ORIENTATIONS = ("RAS",)
CROPS = ("foreground",)
NORMALISATIONS = ("zscore-nonzero",)
RESIZES = ("area",)
#: what each setting means, for the record's readable ``steps`` and the README
_MEANING = {
    "foreground": "crop to the non-zero voxels of the stacked contrasts",
    "zscore-nonzero": "z-score each contrast over its non-zero (brain) voxels",
    "area": "in-plane resize by area averaging (masks: nearest neighbour), slice count kept",
}
#: keys of a record's dictionary form that are descriptive only (written, not read back)
_DESCRIPTIVE = ("steps",)


@dataclass(frozen=True)
class Preprocessing:
    """How scans become a model's input: the one record every stage reads.

    Attributes:
        size: in-plane size (H = W) of the preprocessed grid; the slice count of each case is kept.
        modalities: the contrasts stacked as channels, in channel order (a cache: all four; a checkpoint: the model's
            inputs, see :meth:`for_model`).
        orientation: axis codes every volume is turned to before anything else (``"RAS"``).
        crop: ``"foreground"``: crop to the non-zero voxels of the stacked contrasts (the brain of skull-stripped
            scans).
        normalisation: ``"zscore-nonzero"``: each contrast z-scored over its non-zero voxels.
        resize: in-plane resampling of the images (``"area"``; masks always nearest neighbour).
        version: the pipeline's version (:data:`PREPROCESS_VERSION`); a record of another version is refused.
        label_convention: how the dataset labels its masks (e.g. ``"brats"``, ``"brats2023"``), when one convention
            holds for the whole cache; ``None`` (default): read per case from the manifest's ``label_convention``
            column. Not compared by :meth:`difference`: the in-memory classes are the same whatever the files said.
    """

    size: int
    modalities: tuple[str, ...] = MODALITIES
    orientation: str = "RAS"
    crop: str = "foreground"
    normalisation: str = "zscore-nonzero"
    resize: str = "area"
    version: int = PREPROCESS_VERSION
    label_convention: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 1 <= self.size <= MAX_SIZE:
            raise ConfigError(f"preprocessing size {self.size!r} is not an in-plane size from 1 to {MAX_SIZE}.")
        modalities = (self.modalities,) if isinstance(self.modalities, str) else tuple(self.modalities)
        object.__setattr__(self, "modalities", modalities)
        if (not modalities or any(m not in MODALITIES for m in modalities)
                or len(set(modalities)) != len(modalities)):
            raise ConfigError(f"preprocessing contrasts {list(modalities)} are not distinct names among "
                              f"{', '.join(MODALITIES)}.")
        for name, allowed in (("orientation", ORIENTATIONS), ("crop", CROPS), ("normalisation", NORMALISATIONS),
                              ("resize", RESIZES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"preprocessing {name} {getattr(self, name)!r} is not one this gliofed implements "
                                  f"({', '.join(allowed)}).")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise ConfigError(f"preprocessing version {self.version!r} is not an integer.")
        if self.label_convention is not None and (not isinstance(self.label_convention, str)
                                                  or not self.label_convention):
            raise ConfigError(f"preprocessing label_convention {self.label_convention!r} is not a name or null.")

    # -- forms ----------------------------------------------------------------------------------------------------
    @property
    def steps(self) -> str:
        """The pipeline in words (recorded beside the settings for a reader of ``model.json``)."""
        return (f"{self.orientation} orientation, {_MEANING[self.crop]}, {_MEANING[self.resize]} to "
                f"{self.size}x{self.size}, {_MEANING[self.normalisation]}, channels {', '.join(self.modalities)}, "
                "(C, D, H, W)")

    def to_dict(self) -> dict:
        """Plain JSON types, with the readable ``steps`` (ignored when read back)."""
        values = dataclasses.asdict(self)
        values["modalities"] = list(self.modalities)
        return {**values, "steps": self.steps}

    @classmethod
    def from_dict(cls, values: Mapping, where: str = "preprocessing") -> Preprocessing:
        """The record a :meth:`to_dict` (or an older gliofed's ``{"size", "modalities", "version", "steps"}``) wrote.

        Args:
            values: the mapping read from JSON.
            where: names the file in messages.

        Raises:
            ConfigError: one sentence naming ``where`` and the setting: unknown keys, a missing or invalid size, ...
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: the preprocessing record is a {type(values).__name__}, not a mapping.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in values if k not in known and k not in _DESCRIPTIVE)
        if unknown:
            raise ConfigError(f"{where}: unknown preprocessing setting(s) {', '.join(unknown)}.")
        if values.get("size") is None:
            raise ConfigError(f"{where}: the preprocessing record has no in-plane size.")
        chosen = {k: v for k, v in values.items() if k in known and v is not None or k == "label_convention"}
        if chosen.get("modalities") is not None and not isinstance(chosen["modalities"], (list, tuple)):
            raise ConfigError(f"{where}: preprocessing modalities {chosen['modalities']!r} is not a list.")
        try:
            return cls(**chosen)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        except TypeError as error:  # a value of the wrong type that the checks above did not name
            raise ConfigError(f"{where}: the preprocessing record is not valid ({error}).") from None

    # -- use ------------------------------------------------------------------------------------------------------
    def for_model(self, modalities: Sequence[str]) -> Preprocessing:
        """This record as a model taking ``modalities`` (in that channel order) reads it: the same grid, those
        channels. A contrast this record lacks is a :class:`ConfigError`."""
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise ConfigError(f"the model takes {', '.join(missing)} but the preprocessed data hold only "
                              f"{', '.join(self.modalities)}.")
        return dataclasses.replace(self, modalities=tuple(modalities))

    def for_cache(self) -> Preprocessing:
        """The record of a cache that serves this one: the same grid and steps, all four contrasts stacked (a
        cache always holds all four; a model picks its channels)."""
        return dataclasses.replace(self, modalities=MODALITIES)

    def difference(self, other: Preprocessing, channels: str = "equal") -> str | None:
        """The first setting in which ``other`` would give a model other inputs than this record, in words
        (``"48x48 in-plane (the other: 32x32)"``), or None when they agree.

        Args:
            other: the record to compare with.
            channels: ``"equal"``: the same contrasts in the same order; ``"subset"``: ``other``'s contrasts must
                all be among this record's (a cache of all four serves a model of two).
        """
        if self.version != other.version:
            return f"preprocessing version {self.version} (the other: {other.version})"
        if self.size != other.size:
            return f"{self.size}x{self.size} in-plane (the other: {other.size}x{other.size})"
        for name in ("orientation", "crop", "normalisation", "resize"):
            if getattr(self, name) != getattr(other, name):
                return f"{name} {getattr(self, name)} (the other: {getattr(other, name)})"
        mine, theirs = list(self.modalities), list(other.modalities)
        if (channels == "equal" and mine != theirs) or (channels == "subset" and not set(theirs) <= set(mine)):
            return f"contrasts {', '.join(mine)} (the other: {', '.join(theirs)})"
        return None

    def check_serves(self, other: Preprocessing, where: str, other_where: str, channels: str = "subset") -> None:
        """Raise one sentence when data preprocessed by this record (``where``) cannot feed what ``other``
        (``other_where``) expects.

        Raises:
            ConfigError: ``"<where> was preprocessed with <setting> but <other_where> expects <its setting>; ..."``.
        """
        found = self.difference(other, channels)
        if found is not None:
            mine, _, theirs = found.partition(" (the other: ")
            raise ConfigError(f"{where} was preprocessed with {mine} but {other_where} expects {theirs.rstrip(')')}; "
                              "preprocess again with the expected settings (or use a matching cache).")


def plan_of(record: Mapping | Preprocessing | None, where: str = "preprocessing") -> Preprocessing | None:
    """A :class:`Preprocessing` from a record in any form it is stored in: itself, its dictionary, or None (nothing
    recorded, e.g. an old checkpoint without a size: None)."""
    if record is None or isinstance(record, Preprocessing):
        return record
    if isinstance(record, Mapping) and record.get("size") is None:
        return None
    return Preprocessing.from_dict(record, where)
