"""Experiments: what the notebooks and benchmarks run on top of the library — the strategy comparison, the modality
ablation and the privacy audit. The library itself (engine, federation, data) never imports this package."""

from __future__ import annotations

from gliofed.experiments.ablation import ablation_table, modality_ablation
from gliofed.experiments.comparison import (
    build_sites,
    run_experiment,
    strategy_predictions,
    strategy_thresholds,
    train_and_save,
    trained_model,
    training_provenance,
    training_thresholds,
)
from gliofed.experiments.privacy import privacy_audit

__all__ = ["run_experiment", "train_and_save", "build_sites", "trained_model", "strategy_predictions",
           "strategy_thresholds", "training_thresholds", "training_provenance", "modality_ablation", "ablation_table",
           "privacy_audit"]
