"""gliofed: federated, multi-task glioma MRI analysis (segmentation + IDH, 1p/19q, MGMT, WHO grade).

Package map (one concept per module; data flows down this list):

- :mod:`gliofed.presets` — one :class:`~gliofed.presets.Preset` per name (cohort, cache size, training, distillation);
  :mod:`gliofed.config` — :class:`~gliofed.config.TrainConfig`.
- :mod:`gliofed.data` — manifest, synthetic cohort, checks, dataset adapters, preprocessing cache, Dataset.
- :mod:`gliofed.model` (the network and its one builder), :mod:`gliofed.losses`, :mod:`gliofed.metrics`,
  :mod:`gliofed.engine` (train / predict loops).
- :mod:`gliofed.runs` — :class:`~gliofed.runs.TrainingRun`, the only reader and writer of a run folder;
  :mod:`gliofed.provenance` (versions, commit, training-data fingerprint) and :mod:`gliofed.card` (model cards).
- :mod:`gliofed.federated` — ``strategies/`` (server side), ``site/`` (everything that touches a site's cases),
  ``payload``, ``rounds``, ``simulate`` and ``flower/`` (the two drivers).
- :mod:`gliofed.experiments` — strategy comparison, modality ablation, privacy audit, the benchmark's results as
  text, the teaching helpers and notebook 05's Flower app (what notebooks call).
- :mod:`gliofed.explain` (Grad-CAM), :mod:`gliofed.viz` (plots, viewer), :mod:`gliofed.workspace`,
  :mod:`gliofed.cli`.
"""

from __future__ import annotations

from gliofed._startup import defer_rfc3987_syntax

# before anything imports MONAI: its jsonschema import would compile rfc3987_syntax grammars (~5 s, unused)
defer_rfc3987_syntax()

__version__ = "0.1.0"
__all__ = ["__version__", "print_config"]


def print_config() -> None:
    """Print gliofed's version, the versions of its libraries and the compute device (notebook header)."""
    import importlib.metadata as md
    import platform

    import torch

    print(f"gliofed {__version__} | Python {platform.python_version()} | {platform.platform(terse=True)}")
    names = ["torch", "monai", "nibabel", "captum", "plotly", "ipywidgets", "papermill", "scikit-learn",
             "nilearn", "flwr"]
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    print(" | ".join(versions))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}")
