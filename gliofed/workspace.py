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

    def checkpoint(self, strategy: str) -> Path:
        """Where notebook 02 (and ``gliofed train --out <runs>/<strategy>``) keeps a strategy's final model."""
        return self.runs / strategy / "model.ckpt"

    def trained_model(self, strategy: str, config, rounds: int = 1, local_epochs: int = 1, distill: dict | None = None,
                      device: str = "cpu"):
        """The trained model of ``strategy`` from :meth:`checkpoint`; trained (and saved) first when missing.

        For local-only, the model of the largest training site (each site keeps its own).

        Returns:
            (model, training config).
        """
        from gliofed.engine import load_checkpoint, save_checkpoint

        path = self.checkpoint(strategy)
        if not path.is_file():
            from gliofed.federated.simulate import run_experiment

            print(f"{path} not found: training {strategy} for {rounds} round(s) now "
                  "(notebook 02 trains every strategy for the full comparison)")
            model, history = run_experiment(self.cache, strategy, config, rounds, local_epochs=local_epochs,
                                            distill=distill, checkpoint_dir=path.parent, progress=False)
            save_checkpoint(path, model, config, epoch=rounds, extra={"history": history.rounds, "strategy": strategy})
        model, trained_config, _ = load_checkpoint(path, device)
        if strategy == "local":
            from gliofed.federated.local import LocalOnly

            site_models = LocalOnly.from_checkpoint(path.parent / "state.pt").site_models
            LocalOnly.load(model, site_models[self._largest_site(trained_config.seed, site_models)])
        return model, trained_config

    def _largest_site(self, seed: int, candidates) -> str:
        from gliofed.data.dataset import CaseDataset

        sizes = CaseDataset(self.cache, split="train", seed=seed).index["site"].value_counts()
        return next(site for site in sizes.index if site in candidates)

    def test_predictions(self, strategy: str, config, test_set, **train_kwargs):
        """Test-split predictions of a strategy's final model: the ones its training run saved
        (``runs/<strategy>/predictions_test.csv``) when they cover exactly ``test_set``'s cases, else predicted
        now (training first if needed, see :meth:`trained_model`). Local-only: the largest site's model."""
        import pandas as pd

        from gliofed.engine import predict
        from gliofed.federated.simulate import PREDICTIONS_FILE

        saved = self.runs / strategy / PREDICTIONS_FILE
        if saved.is_file() and self.checkpoint(strategy).is_file():
            table = pd.read_csv(saved, dtype={"subject": str, "site": str})
            name = "global" if set(table["model"]) == {"global"} else self._largest_site(config.seed, set(table["model"]))
            chosen = table[table["model"] == name].drop(columns="model").reset_index(drop=True)
            if list(chosen["subject"]) == list(test_set.index["subject_id"]):
                return chosen
        model, _ = self.trained_model(strategy, config, **train_kwargs)
        return predict(model, test_set, device=config.device, progress=False)
