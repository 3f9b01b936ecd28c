"""Where a notebook or CLI run keeps its cohort, cache and outputs — one convention for every notebook."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gliofed.presets import Preset, get_preset

__all__ = ["Workspace"]


@dataclass(frozen=True)
class Workspace:
    """A data folder: ``manifest.csv`` (+ NIfTI files), ``cache_<size>/`` and ``runs/<strategy>/`` run folders.

    Args:
        data_dir: the folder; ``None`` = ``$GLIOFED_DATA`` or ``<tmp>/gliofed/<preset>``.
        preset: the :mod:`~gliofed.presets` name: the synthetic cohort generated when the folder has no manifest yet,
            the cache size and the training and distillation settings (default ``workshop``).
        size: in-plane preprocessing size; ``None`` = the preset's ``cache_size``.
    """

    data_dir: Path
    preset: str = "workshop"
    size: int = 128

    @classmethod
    def resolve(cls, data_dir: str | Path | None = None, preset: str = "workshop",
                size: int | None = None) -> Workspace:
        chosen = get_preset(preset)
        folder = data_dir or os.environ.get("GLIOFED_DATA") or Path(tempfile.gettempdir()) / "gliofed" / preset
        return cls(Path(folder), preset, chosen.cache_size if size is None else size)

    @classmethod
    def prepare(cls, data_dir: str | Path | None = None, preset: str = "workshop", seed: int = 0,
                device: str = "auto", **train_overrides):
        """A notebook's setup in one call: resolve the folder, generate the cohort if needed, bring the cache up to
        date (printing its report) and return the preset's training config for ``seed`` and ``device``.

        Returns:
            (workspace, :class:`~gliofed.config.TrainConfig`).
        """
        ws = cls.resolve(data_dir, preset)
        ws.ensure_cohort(seed=seed)
        print(ws.ensure_cache())
        return ws, ws.settings.train.replace(seed=seed, device=device, **train_overrides)

    @property
    def settings(self) -> Preset:
        """The whole :class:`~gliofed.presets.Preset`."""
        return get_preset(self.preset)

    @property
    def distill(self) -> dict:
        """The preset's distillation settings."""
        return dict(self.settings.distill)

    @property
    def manifest(self) -> Path:
        return self.data_dir / "manifest.csv"

    @property
    def cache(self) -> Path:
        return self.data_dir / f"cache_{self.size}"

    @property
    def runs(self) -> Path:
        """Run folders: ``runs/<strategy>/`` (see :class:`~gliofed.runs.TrainingRun`) and notebook results."""
        return self.data_dir / "runs"

    def ensure_cohort(self, seed: int = 0, **kwargs):
        """Generate the synthetic cohort unless the folder already has a manifest; return the manifest."""
        from gliofed.data.manifest import read_manifest
        from gliofed.data.synth import make_cohort

        if self.manifest.is_file():
            print(f"using the existing cohort {self.manifest}")
            return read_manifest(self.manifest)
        return make_cohort(self.data_dir, preset=self.preset, seed=seed, **kwargs)

    def ensure_cache(self, workers: int = 1):
        """Preprocess the manifest into :attr:`cache` (up-to-date cases are skipped); return the report."""
        from gliofed.data.cache import preprocess

        return preprocess(self.manifest, self.cache, size=self.size, workers=workers)
