"""Modality ablation (the seed's Fig. 3): the same centralized recipe trained on T1, T1+T2, T1+T2+T1ce and all
four contrasts, scored on the same test split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from gliofed.config import TrainConfig
from gliofed.data.dataset import MODALITY_SETS, CaseDataset
from gliofed.engine import fit, predict, seed_everything
from gliofed.inference import preprocessing_of_cache
from gliofed.metrics import evaluate_predictions
from gliofed.model import build_model
from gliofed.runs import TrainingRun

__all__ = ["modality_ablation", "ablation_table"]


def ablation_table(predictions: pd.DataFrame, modalities: str, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Long table for :func:`gliofed.viz.plots.plot_ablation`: AUC per marker (with bootstrap CIs) and median
    whole-tumour Dice, labelled with the modality set."""
    scores = evaluate_predictions(predictions, n_boot=n_boot, seed=seed)
    classification = scores["classification"]
    auc = classification[(classification["metric"] == "AUC") & classification["task"].isin(
        ["idh", "codeletion", "mgmt", "grade"])]
    rows = [{"metric": f"auc_{r.task}", "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n}
            for r in auc.itertuples()]
    seg = scores["segmentation"]
    wt = seg[(seg["metric"] == "Dice") & (seg["region"] == "WT")]
    if len(wt):
        rows.insert(0, {"metric": "dice_WT", "value": wt["median"].iloc[0], "ci_low": wt["q1"].iloc[0],
                        "ci_high": wt["q3"].iloc[0], "n": wt["n"].iloc[0]})
    return pd.DataFrame(rows).assign(modalities=modalities)[["modalities", "metric", "value", "ci_low", "ci_high", "n"]]


def modality_ablation(cache_dir: str | Path, config: TrainConfig, epochs: int, out_dir: str | Path,
                      sets: dict[str, Sequence[str]] | None = None, n_boot: int = 200,
                      device: str = "cpu") -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Train one centralized model per modality set for ``epochs`` epochs and score each on the test split.

    Models are saved as run folders ``out_dir/<set>/`` (:class:`~gliofed.runs.TrainingRun`) and reused when one
    with the same recipe (modalities, epochs, seed, optimiser, learning rate) is already there, so reruns and sweeps
    are cheap.

    Returns:
        (long table of :func:`ablation_table` for every set, ``{set: predictions}``).
    """
    sets = dict(sets or MODALITY_SETS)
    tables, predictions = [], {}
    for name, modalities in sets.items():
        set_config = replace(config, modalities=tuple(modalities))
        run = TrainingRun(Path(out_dir) / name.replace("+", "_"))
        model = None
        if run.has_model:
            model, saved, state = run.load_model(device)
            if saved.to_dict() != set_config.to_dict() or state.get("epoch") != epochs:
                model = None  # another recipe: train again
        if model is None:
            print(f"training {name} ({', '.join(modalities)}) for {epochs} epoch(s)", flush=True)
            model = _train(cache_dir, set_config, epochs)
            run.save_model(model, set_config, epoch=epochs,
                           preprocessing=preprocessing_of_cache(cache_dir, set_config.modalities))
        test = CaseDataset(cache_dir, split="test", modalities=modalities, seed=config.seed)
        predictions[name] = predict(model, test, device=device, progress=False, hd95=False)  # Dice and AUC only
        tables.append(ablation_table(predictions[name], name, n_boot=n_boot, seed=config.seed))
    return pd.concat(tables, ignore_index=True), predictions


def _train(cache_dir: str | Path, config: TrainConfig, epochs: int):
    """Pooled (centralized) training on every site's training cases, scored only once afterwards."""
    seed_everything(config.seed)
    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed)
    model = build_model(config)
    fit(model, train, config, epochs=epochs, progress=False)  # augments as config.augment says
    return model.cpu()
