"""A model card for a trained run (``gliofed card RUN``): where the model came from, what it was trained and tested
on, how well it did (with intervals), how it decides, what it is for and what it is not for.

Everything on the card is read from the run folder (:class:`~gliofed.runs.TrainingRun`): ``model.json`` (configs,
preprocessing, thresholds, provenance) and ``predictions_test.csv`` (the last round's test predictions); nothing
is typed by hand. Follows the sections of Mitchell et al., *Model Cards for Model Reporting* (FAT* 2019).

>>> print(model_card("runs/fedavg"))     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gliofed.errors import CheckpointError

__all__ = ["model_card", "INTENDED_USE", "LIMITS"]

#: what every gliofed model is for
INTENDED_USE = (
    "Teaching and research on federated, multi-task glioma MRI analysis: comparing training strategies, "
    "studying what crosses the network, and reproducing Ren et al. (Front. Radiol. 2025). Inputs: pre-operative "
    "T1, T1ce, T2 and FLAIR of adult diffuse glioma, skull-stripped and co-registered as in BraTS."
)

#: limits that hold for every gliofed model (the card adds the run's own)
LIMITS = (
    "**Not for clinical use.** Not a medical device, not validated prospectively; do not base diagnosis, "
    "treatment or prognosis on its masks or marker probabilities.",
    "The intervals resample the test cases of this one training run: they do not cover the variation between "
    "training runs (seeds), which is often larger.",
    "Performance on other scanners, protocols, populations or preprocessing is unknown; small test sets give wide "
    "intervals.",
    "Decision thresholds were chosen on the training split; calibration on new data may differ (see ECE, Brier).",
)


def _table(frame: pd.DataFrame) -> str:
    """A Markdown table (no third-party renderer)."""
    frame = frame.reset_index()
    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def _thresholds_table(record: dict) -> str:
    from gliofed.metrics import BINARY_MARKERS, THRESHOLD_METHODS, threshold_values

    stored, counts = record.get("markers", {}), record.get("n", {})
    method = THRESHOLD_METHODS.get(record.get("method"), record.get("method"))
    rows = {marker: {"threshold": f"{value:.3f}",
                     "chosen by": f"{method} on the {record.get('split')} split" if marker in stored else
                     "fixed 0.5 (none stored: one class, or no labels, among the training cases)",
                     "training cases with the label": counts.get(marker, "")}
            for marker, value in threshold_values(record).items() if marker in BINARY_MARKERS}
    return ("A case is called positive (IDH mutant, 1p/19q co-deleted, MGMT methylated) when that class's probability "
            "is at least the threshold; grade is the most likely class.\n\n"
            + _table(pd.DataFrame(rows).T.rename_axis("marker")))


def _test_predictions(run, state: dict) -> tuple[pd.DataFrame | None, str, dict]:
    """(the saved test predictions of the model the card describes, its name, its thresholds)."""
    saved = run.load_predictions()
    thresholds = state.get("thresholds") or {}
    if saved is None or not len(saved):
        return None, "", thresholds
    if "model" not in saved or set(saved["model"]) == {"global"}:
        return saved.drop(columns="model", errors="ignore"), "the model", thresholds
    sites = ((state.get("provenance") or {}).get("training_data") or {}).get("sites") or {}
    candidates = set(saved["model"])
    largest = max(candidates, key=lambda name: (sites.get(name, 0), name))
    site_thresholds = ((state.get("extra") or {}).get("site_thresholds") or {}).get(largest, {})
    chosen = saved[saved["model"] == largest].drop(columns="model")
    return chosen, f"site {largest}'s model (the largest site; local-only keeps one model per site)", site_thresholds


def model_card(run_dir: str | Path, n_boot: int = 1000) -> str:
    """The model card of a run folder (or its ``model.safetensors``) as Markdown.

    Args:
        run_dir: the run folder, or the checkpoint inside it.
        n_boot: bootstrap resamples for the metrics' 95 % CIs (default 1000; 0: none).

    Returns:
        the card: provenance, data and sites, metrics with CIs, decision thresholds, intended use, limits.

    Raises:
        CheckpointError: no readable model in the folder.
    """
    from gliofed.metrics import evaluate_predictions, results_table, threshold_note
    from gliofed.runs import TrainingRun

    path = Path(run_dir)
    run = TrainingRun(path.parent if path.is_file() else path)
    if not run.has_model:
        raise CheckpointError(f"{run.out_dir}: no {TrainingRun.MODEL} in this folder.")
    model, config, state = run.load_model()
    extra = state.get("extra") or {}
    training = extra.get("training") or {}
    provenance = state.get("provenance") or {}
    versions = provenance.get("versions") or {}
    data = provenance.get("training_data") or {}
    preprocessing = state.get("preprocessing") or {}
    strategy = training.get("strategy") or extra.get("strategy") or "unknown"

    lines = [f"# Model card: {run.out_dir}", "",
             "**Not for clinical use.** Research and teaching software; see *Limits*.", "", "## Model", ""]
    parameters = sum(p.numel() for p in model.parameters())
    lines += [f"- Network: multi-task 3D U-Net ({parameters:,} parameters): segmentation (WT, TC, ET) and IDH, "
              "1p/19q, MGMT, WHO grade.",
              f"- Input: {', '.join(preprocessing.get('modalities') or config.modalities)}; in-plane size "
              f"{preprocessing.get('size', 'not recorded')}; preprocessing version {preprocessing.get('version', '?')} "
              f"({preprocessing.get('steps', 'steps not recorded')}).",
              f"- Training: strategy {strategy}"
              + (f", {training['rounds']} round(s) x {training.get('local_epochs', 1)} local epoch(s)"
                 if training.get("rounds") else f", {state.get('epoch', '?')} round(s)/epoch(s)")
              + f"; {config.optimizer} lr {config.lr:g}, batch {config.batch_size}, seed {config.seed}"
              + (f"; site {training['external_site']} held out" if training.get("external_site") else "") + "."]
    commit = provenance.get("commit")
    lines += ["- Software: " + (", ".join(f"{k} {v}" for k, v in versions.items() if v) or "not recorded (a model "
                                "saved before gliofed recorded provenance)") + ".",
              "- Code: " + (f"git commit {commit['sha']}" + (" with uncommitted changes" if commit.get("dirty") else "")
                            if commit else "no git commit recorded (trained outside a gliofed checkout, or before "
                            "gliofed recorded it)") + "."]

    lines += ["", "## Data", ""]
    if data:
        manifest = data.get("manifest") or {}
        lines += [f"- Training cases: {data.get('cases')} from {len(data.get('sites') or {})} site(s), "
                  f"{data.get('with_mask')} with a tumour mask; fingerprint sha256 {data.get('sha256')} (cases, labels "
                  "and preprocessed files).",
                  "- Known labels among them: " + ", ".join(f"{k} {v}" for k, v in (data.get("known_labels") or {})
                                                             .items()) + "."]
        if manifest:
            lines.append(f"- Manifest: {manifest.get('path')} (sha256 {manifest.get('sha256')}).")
        sites = pd.DataFrame({"training cases": data.get("sites") or {}}).rename_axis("site")
        lines += ["", _table(sites)]
    else:
        lines.append("- Not recorded (a model saved before gliofed fingerprinted its training data).")

    lines += ["", "## Metrics", ""]
    predictions, which, thresholds = _test_predictions(run, state)
    if predictions is None:
        lines.append("No test predictions were saved with this run: score it with `gliofed evaluate`.")
    else:
        scores = evaluate_predictions(predictions, n_boot=n_boot, seed=config.seed, thresholds=thresholds)
        table3 = results_table(scores["classification"])
        lines.append(f"Test split of the training cohort ({len(predictions)} case(s); predictions of {which} after the "
                     f"last round), {n_boot} bootstrap resamples over test cases for the 95 % CIs.")
        if len(table3):
            lines += ["", _table(table3), "", threshold_note(thresholds)]
        dice = scores["segmentation"]
        dice = dice[dice["metric"] == "Dice"]
        if len(dice):
            dice = dice.assign(**{"Dice median [IQR]": [f"{r.median:.2f} [{r.q1:.2f}, {r.q3:.2f}]"
                                                       for r in dice.itertuples()]})
            lines += ["", _table(dice.set_index("region")[["Dice median [IQR]", "n"]])]

    lines += ["", "## Decision thresholds", ""]
    lines.append(_thresholds_table(thresholds if predictions is not None else state.get("thresholds") or {}))

    lines += ["", "## Intended use", "", INTENDED_USE, "", "## Limits", ""]
    lines += [f"- {limit}" for limit in LIMITS]
    per_marker = (data.get("known_labels") or {}) if data else {}
    scarce = [m for m, n in per_marker.items() if isinstance(n, int | np.integer) and n < 30]
    if scarce:
        lines.append(f"- Few training labels for {', '.join(scarce)} (under 30 cases each): treat those heads as "
                     "exploratory.")
    if extra.get("cache") and (Path(str(extra["cache"])).parent / "cohort.json").is_file():
        lines.append("- Trained on gliofed's synthetic cohort: its scores say nothing about real patients.")
    return "\n".join(lines)
