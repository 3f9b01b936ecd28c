"""Where a notebook or CLI run keeps its cohort, cache and outputs — one convention for every notebook."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from gliofed.errors import ConfigError
from gliofed.presets import COHORT_FILE, Preset, get_preset

__all__ = ["Workspace", "DATA_ENV", "default_data_root"]

#: environment variable naming the folder that holds one data folder per preset (default ``~/gliofed-data``)
DATA_ENV = "GLIOFED_DATA"


def default_data_root() -> Path:
    """Where notebooks keep their data when no ``data_dir`` is given: ``$GLIOFED_DATA``, else ``~/gliofed-data``
    (per user, so that people sharing a JupyterHub never share, or overwrite, a cohort)."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / "gliofed-data").expanduser()


@dataclass(frozen=True)
class Workspace:
    """A data folder: ``manifest.csv`` (+ NIfTI files), ``cache_<size>/`` and ``runs/<strategy>/`` run folders.

    Args:
        data_dir: the folder; ``None`` = ``<root>/<preset>`` with the root :func:`default_data_root`
            (``$GLIOFED_DATA``, else ``~/gliofed-data``).
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
        folder = Path(data_dir).expanduser() if data_dir else default_data_root() / preset
        return cls(folder, preset, chosen.cache_size if size is None else size)

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
        """Generate the synthetic cohort unless the folder already has a manifest; return the manifest.

        A synthetic cohort already there is used only if it was made with this ``seed`` and preset (its
        ``cohort.json``); one made otherwise is refused, never silently reused: the seed would not reproduce what it
        says. A manifest without ``cohort.json`` (your own data) is used as it is.

        Raises:
            ConfigError: the folder holds a synthetic cohort of another seed or preset.
        """
        from gliofed.data.manifest import read_manifest
        from gliofed.data.synth import make_cohort

        if self.manifest.is_file():
            self.check_cohort(seed)
            print(f"using the existing cohort {self.manifest}")
            return read_manifest(self.manifest)
        return make_cohort(self.data_dir, preset=self.preset, seed=seed, **kwargs)

    def check_cohort(self, seed: int) -> None:
        """Refuse a synthetic cohort in this folder made with another seed or preset than asked for (see
        :meth:`ensure_cohort`); nothing to check for a manifest without ``cohort.json``."""
        record_path = self.data_dir / COHORT_FILE
        if not record_path.is_file():
            return
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ConfigError(f"{record_path}: not a readable cohort file ({type(error).__name__}).") from None
        made = {"seed": record.get("seed"), "preset": record.get("preset")} if isinstance(record, dict) else {}
        asked = {"seed": seed, "preset": self.preset}
        differ = [f"{key} {made.get(key)!r} (asked for {asked[key]!r})" for key in asked if made.get(key) != asked[key]]
        if differ:
            raise ConfigError(f"{self.data_dir} holds a synthetic cohort made with {', '.join(differ)}; give another "
                              "data_dir for a new cohort, or delete this folder to make it again.")

    def ensure_cache(self, workers: int = 1):
        """Preprocess the manifest into :attr:`cache` (up-to-date cases are skipped); return the report."""
        from gliofed.data.cache import preprocess

        return preprocess(self.manifest, self.cache, size=self.size, workers=workers)
