"""Where a notebook or CLI run keeps its cohort, cache and outputs — one convention for every notebook."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Workspace"]


@dataclass(frozen=True)
class Workspace:
    """A data folder: ``manifest.csv`` (+ NIfTI files), ``cache_<size>/`` and ``runs/``.

    Args:
        data_dir: the folder; ``None`` = ``$GLIOFED_DATA`` or ``<tmp>/gliofed/<preset>``.
        preset: synthetic cohort preset used when the folder has no manifest yet (default ``workshop``).
        size: in-plane preprocessing size; ``None`` = the preset's ``cache_size``.
    """

    data_dir: Path
    preset: str = "workshop"
    size: int = 128

    @classmethod
    def resolve(cls, data_dir: str | Path | None = None, preset: str = "workshop", size: int | None = None) -> "Workspace":
        from gliofed.data.synth import PRESETS

        folder = data_dir or os.environ.get("GLIOFED_DATA") or Path(tempfile.gettempdir()) / "gliofed" / preset
        if size is None:
            size = PRESETS[preset].cache_size if preset in PRESETS else 128
        return cls(Path(folder), preset, size)

    @property
    def manifest(self) -> Path:
        return self.data_dir / "manifest.csv"

    @property
    def cache(self) -> Path:
        return self.data_dir / f"cache_{self.size}"

    @property
    def runs(self) -> Path:
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
