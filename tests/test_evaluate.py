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
    assert {r["metric"] for r in metrics["segmentation"]} == {"Dice", "HD95 (mm)", "lesion-wise Dice",
                                                              "lesion-wise HD95 (mm)", "lesion detection F1"}
    quick = metrics["segmentation_quick"]
    assert "quick metric" in quick["grid"] and {r["metric"] for r in quick["table"]} == {"Dice", "HD95 (mm)"}
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


def _test_cases(tiny_cohort, subjects, tmp_path):
    """The tiny cohort's rows of ``subjects`` as a manifest with absolute paths."""
    table = pd.read_csv(tiny_cohort / "manifest.csv", dtype=str, keep_default_na=False).set_index("subject_id")
    table = table.loc[list(subjects)].reset_index()
    for column in ("t1", "t1ce", "t2", "flair", "seg"):
        table[column] = [str(tiny_cohort / p) if p else "" for p in table[column]]
    path = tmp_path / "cases.csv"
    table.to_csv(path, index=False)
    return path, table.set_index("subject_id")


def test_evaluate_scores_predicts_masks_in_the_scans_own_grid(tiny_cohort, checkpoint, tmp_path):
    """What evaluate scores is what `gliofed predict` writes: the same inverse, scored against the reference masks
    with the scans' own voxel spacing."""
    from gliofed.brats_metrics import brats_scores
    from gliofed.data.conventions import convention

    manifest = str(tiny_cohort / "manifest.csv")
    assert main(["evaluate", str(checkpoint), manifest, "--bootstrap", "0", "--device", "cpu",
                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "eval")]) == 0
    scored = pd.read_csv(tmp_path / "eval" / "scores_brats.csv", dtype={"subject": str}).set_index("subject")
    assert len(scored) > 0
    cases, table = _test_cases(tiny_cohort, scored.index, tmp_path)
    assert main(["predict", str(checkpoint), "--manifest", str(cases), "--device", "cpu",
                 "--out", str(tmp_path / "pred")]) == 0
    for subject, row in scored.iterrows():
        written = nib.load(tmp_path / "pred" / f"{subject}_seg.nii.gz")
        reference = nib.load(table.loc[subject, "seg"])
        assert written.shape == reference.shape  # the scan's grid, not the cache's
        expected = brats_scores(convention("brats").decode(np.asarray(written.dataobj)),
                                convention("brats").decode(np.asarray(reference.dataobj)),
                                reference.header.get_zooms()[:3])
        for key, value in expected.items():
            assert (np.isnan(value) and np.isnan(row[key])) or row[key] == pytest.approx(value), key


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache folder for tests that only vary the checkpoint's path (evaluate brings it up to date once)."""
    return tmp_path_factory.mktemp("eval_cache")


@pytest.mark.parametrize("form", ["run folder", "old model.ckpt name"])
def test_evaluate_takes_the_run_folder_or_the_old_checkpoint_name(form, tiny_cohort, checkpoint, shared_cache,
                                                                   tmp_path):
    target = checkpoint.parent if form == "run folder" else checkpoint.with_name("model.ckpt")
    assert not target.exists() or target.is_dir()  # model.ckpt names the run's model.safetensors
    assert main(["evaluate", str(target), str(tiny_cohort / "manifest.csv"), "--bootstrap", "0", "--device", "cpu",
                 "--cache", str(shared_cache), "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["size"] == 16


def test_evaluate_refuses_a_folder_without_a_model(tiny_cohort, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), str(tiny_cohort / "manifest.csv"), "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip().endswith("no model.safetensors in this folder.")
