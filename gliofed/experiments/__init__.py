"""Experiments: what the notebooks and benchmarks run on top of the library — the strategy comparison, the modality
ablation and the privacy audit; :mod:`~gliofed.experiments.benchmark` (the seeded benchmark's CSVs as text and fair
budgets), :mod:`~gliofed.experiments.teaching` (toy FedAvg, client drift, distilled sets) and
:mod:`~gliofed.experiments.flower_demo` (notebook 05's Flower app). The library itself (engine, federation, data)
never imports this package."""

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
from gliofed.experiments.privacy import outgoing_audit, privacy_audit

__all__ = ["run_experiment", "train_and_save", "build_sites", "trained_model", "strategy_predictions",
           "strategy_thresholds", "training_thresholds", "training_provenance", "modality_ablation", "ablation_table",
           "privacy_audit", "outgoing_audit"]
