"""README's "your own BraTS data" path, as written: curate -> check -> preprocess -> train -> evaluate -> predict, on a
BraTS 2018-style release (ET = 4, `_t1ce` names, institutions in the IDs) and a BraTS 2023-style one (ET = 3,
`-t1c` names); predict writes each in its own label convention."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from gliofed.cli import main
from gliofed.data.manifest import read_manifest
from gliofed.runs import load_checkpoint, save_checkpoint
from tests.data.source_fixtures import brats_release

RELEASES = {
    "brats2018": ("brats", ["Brats18_TCIA02_101_1", "Brats18_TCIA02_102_1", "Brats18_CBICA_AAA_1",
                            "Brats18_CBICA_AAB_1", "Brats18_2013_1_1", "Brats18_2013_2_1"], 4, ""),
    "brats2023": ("brats2023", [f"BraTS-GLI-{n:05d}-000" for n in range(4)], 3, "brats2023"),
}


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_your_own_brats_data_path(release, tmp_path, capsys):
    naming, subjects, et, convention = RELEASES[release]
    root = brats_release(tmp_path / "download", naming, subjects)
    manifest, cache, run = tmp_path / "manifests" / "mine.csv", tmp_path / "cache", tmp_path / "runs" / "mine"
    # 1. curate
    assert main(["curate", "--source", "brats", "--root", str(root), "--out", str(manifest)]) == 0
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    assert len(rows) == len(subjects) and set(rows["label_convention"]) == {convention}
    if naming == "brats":  # the institution in each ID is its site
        assert set(rows["site"]) == {"TCIA02", "CBICA", "2013"}
    # 2. check, 3. preprocess
    assert main(["check", str(manifest)]) == 0
    assert main(["preprocess", str(manifest), "--cache", str(cache), "--size", "8"]) == 0
    # 4. train (1 epoch, tiny)
    assert main(["train", str(manifest), "--preset", "tiny", "--epochs", "1", "--size", "8", "--cache", str(cache),
                 "--device", "cpu", "--out", str(run)]) == 0
    # 5. evaluate: the run folder, scored in the scans' own grids
    assert main(["evaluate", str(run), str(manifest), "--cache", str(cache), "--bootstrap", "0", "--device", "cpu",
                 "--out", str(run / "eval")]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    dice_wt = next(r for r in metrics["segmentation"] if r["metric"] == "Dice" and r["region"] == "WT")
    assert dice_wt["n"] >= 1 and "scans' own grids" in capsys.readouterr().out
    # 6. predict, in the release's own label convention
    assert main(["predict", str(run), "--manifest", str(manifest), "--device", "cpu",
                 "--out", str(tmp_path / "predictions")]) == 0
    table = pd.read_csv(tmp_path / "predictions" / "predictions.csv", keep_default_na=False)
    assert set(table["label_convention"]) == {convention or "brats"} and len(table) == len(subjects)
    # a model that calls every brain voxel enhancing tumour shows which label the convention writes
    model, config, state = load_checkpoint(run)
    with torch.no_grad():
        model.seg_head.bias.copy_(torch.tensor([-20.0, -20.0, -20.0, 20.0]))
    save_checkpoint(tmp_path / "enhancing" / "model.safetensors", model, config,
                    preprocessing=state["preprocessing"])
    assert main(["predict", str(tmp_path / "enhancing"), "--manifest", str(manifest), "--device", "cpu",
                 "--out", str(tmp_path / "enhancing_out")]) == 0
    scans = read_manifest(manifest).set_index("subject_id")
    for subject in subjects:
        written = nib.load(tmp_path / "enhancing_out" / f"{subject}_seg.nii.gz")
        flair = nib.load(scans.loc[subject, "flair"])
        assert written.shape == flair.shape and np.array_equal(written.affine, flair.affine)
        assert set(np.unique(np.asarray(written.dataobj))) == {0, et}
