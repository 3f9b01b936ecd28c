"""`gliofed evaluate` on whatever labels a cohort has, with the checkpoint's own preprocessing."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from gliofed.cli import main
from gliofed.config import TrainConfig
from gliofed.data.cache import PREPROCESS_VERSION
from gliofed.model import build_model
from gliofed.runs import save_checkpoint

MARKER_COLUMNS = ["idh", "codeletion", "mgmt", "grade"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = TrainConfig(model={"features": (4, 8, 16, 32), "hidden": 8}, modalities=("t1", "t2"), device="cpu")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(folder / "model.safetensors", build_model(config), config,
                           preprocessing={"size": 16, "modalities": ["t1", "t2"], "version": PREPROCESS_VERSION})


def _manifest(tiny_cohort, tmp_path, kind: str) -> str:
    table = pd.read_csv(tiny_cohort / "manifest.csv", dtype=str, keep_default_na=False)
    for column in ("t1", "t1ce", "t2", "flair", "seg"):
        table[column] = [str(tiny_cohort / p) if p else "" for p in table[column]]
    test = table["split"] == "test"
    if kind == "seg-only":  # BraTS 2018-2020: masks, no molecular labels
        table[MARKER_COLUMNS] = ""
    elif kind == "markers-only":
        table["seg"] = ""
    else:  # mixed: half of the test cases lose their mask, the other half their labels
        rows = table.index[test]
        table.loc[rows[::2], "seg"] = ""
        table.loc[rows[1::2], MARKER_COLUMNS] = ""
    path = tmp_path / f"{kind}.csv"
    table.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("kind", ["seg-only", "markers-only", "mixed"])
def test_evaluate_scores_whatever_labels_exist(kind, tiny_cohort, checkpoint, tmp_path, capsys):
    manifest = _manifest(tiny_cohort, tmp_path, kind)
    assert main(["evaluate", str(checkpoint), manifest, "--bootstrap", "5", "--device", "cpu",
                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["size"] == 16 and metrics["modalities"] == ["t1", "t2"]  # the checkpoint's, not a default
    assert {r["metric"] for r in metrics["segmentation"]} == {"Dice", "HD95 (mm)"}  # the cache knows its spacing
    dice = [r for r in metrics["segmentation"] if r["metric"] == "Dice" and r["region"] == "WT"][0]
    tasks = {r["task"] for r in metrics["classification"]}
    if kind == "seg-only":
        assert not tasks and dice["n"] > 0 and "no marker labels" in out
    elif kind == "markers-only":
        assert "idh" in tasks and dice["n"] == 0 and "no masks" in out
    else:
        assert "idh" in tasks and dice["n"] > 0
        assert metrics["cases"] > dice["n"]


def test_evaluate_refuses_a_size_the_model_was_not_trained_at(tiny_cohort, checkpoint, tmp_path, capsys):
    assert main(["evaluate", str(checkpoint), str(tiny_cohort / "manifest.csv"), "--size", "128",
                 "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gliofed: error:") and "trained on 16x16" in err and "\n" not in err
    assert not (tmp_path / "eval").exists()


def test_evaluate_reports_postprocessing_separately_and_writes_nifti(tiny_cohort, checkpoint, tmp_path):
    manifest = str(tiny_cohort / "manifest.csv")
    assert main(["evaluate", str(checkpoint), manifest, "--bootstrap", "5", "--device", "cpu", "--keep-largest",
                 "--nifti", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["postprocessing"] == {"min_voxels": 0, "keep_largest": True}
    assert {r["metric"] for r in metrics["segmentation_postprocessed"]} == {r["metric"] for r in
                                                                          metrics["segmentation"]}
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert {"dice_WT", "pp_dice_WT"} <= set(predictions)
    manifest_table = pd.read_csv(manifest, dtype=str)
    for subject in predictions["subject"]:
        flair = nib.load(tiny_cohort / manifest_table.set_index("subject_id").loc[subject, "flair"])
        saved = nib.load(tmp_path / "eval" / "nifti" / f"{subject}_seg.nii.gz")
        assert saved.shape == flair.shape and np.array_equal(saved.affine, flair.affine)
