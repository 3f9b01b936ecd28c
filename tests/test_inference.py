"""`gliofed predict`: the training preprocessing, inverted back to each scan's own grid, written as NIfTI."""

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
from gliofed.data.manifest import read_manifest
from gliofed.inference import Predictor, inference_pipeline, postprocess_mask, subject_name
from gliofed.model import build_model
from gliofed.runs import save_checkpoint
from gliofed.vocab import MODALITIES

SMALL_MODEL = {"features": (4, 8, 16, 32), "hidden": 8}


def oblique_lps_case(folder, shape=(20, 22, 9), spacing=(1.0, 1.2, 3.0), angle=0.2):
    """Four contrasts on an oblique (rotated 0.2 rad), anisotropic, LPS-oriented grid: an ellipsoidal 'brain' in a
    zero background and a bright FLAIR blob at voxel (6, 13, 4). Returns (paths, the blob mask)."""
    folder.mkdir(parents=True, exist_ok=True)
    c, s = np.cos(angle), np.sin(angle)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(spacing)
    affine[:3, 3] = [30.0, 20.0, -10.0]
    idx = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    brain = sum(((idx[i] - centre[i]) / (0.4 * shape[i])) ** 2 for i in range(3)) <= 1.0
    blob = sum(((idx[i] - b) / r) ** 2 for i, (b, r) in enumerate(zip((6, 13, 4), (2.5, 2.5, 1.2)))) <= 1.0
    blob &= brain
    rng = np.random.default_rng(0)
    paths = {}
    for k, name in enumerate(MODALITIES):
        data = np.where(brain, 100 + 10 * k + rng.normal(0, 2, shape), 0.0)
        if name == "flair":
            data = np.where(blob, 400.0, data)
        paths[name] = str(folder / f"case7_{name}.nii.gz")
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), paths[name])
    return paths, blob


class BlobEcho(torch.nn.Module):
    """A stand-in network whose segmentation is 'oedema wherever the z-scored FLAIR is bright' and whose IDH head
    says mutant: what it outputs is known, so where the mask lands tests the geometry alone."""

    def __init__(self, flair_channel: int) -> None:
        super().__init__()
        self.flair_channel = flair_channel

    def forward(self, x):
        bright = (x[:, self.flair_channel] > 2.0).float()
        zeros = torch.zeros_like(bright)
        return {"seg": torch.stack([1 - bright, zeros, bright, zeros], 1), "idh": torch.tensor([[0.0, 2.0]]),
                "codeletion": torch.zeros(1, 2), "mgmt": torch.zeros(1, 2), "grade": torch.zeros(1, 3)}


def _checkpoint(path, size=16, modalities=MODALITIES):
    config = TrainConfig(model=SMALL_MODEL, modalities=modalities, device="cpu")
    torch.manual_seed(0)
    return save_checkpoint(path, build_model(config), config,
                           preprocessing={"size": size, "modalities": list(modalities), "version": PREPROCESS_VERSION})


def test_mask_returns_to_the_oblique_lps_grid_where_the_blob_was(tmp_path):
    paths, blob = oblique_lps_case(tmp_path / "scans")
    predictor = Predictor(_checkpoint(tmp_path / "m.safetensors"), device="cpu")
    predictor.model = BlobEcho(MODALITIES.index("flair"))
    row = predictor.write_case("case7", predictor.predict_case("case7", paths), tmp_path / "out")
    flair, saved = nib.load(paths["flair"]), nib.load(tmp_path / "out" / "case7_seg.nii.gz")
    assert saved.shape == flair.shape and np.array_equal(saved.affine, flair.affine)
    mask = np.asarray(saved.dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 2}
    found = mask > 0
    assert 2 * (found & blob).sum() / (found.sum() + blob.sum()) > 0.75
    centre = lambda m: flair.affine[:3, :3] @ np.argwhere(m).mean(0) + flair.affine[:3, 3]  # noqa: E731
    assert np.linalg.norm(centre(found) - centre(blob)) < 1.5  # mm, world coordinates
    markers = json.loads((tmp_path / "out" / "case7_markers.json").read_text())
    assert markers["predicted"]["idh"] == "mutant" and markers["probabilities"]["idh"]["mutant"] > 0.8
    assert row["volume_WT_ml"] == pytest.approx(found.sum() * abs(np.linalg.det(flair.affine[:3, :3])) / 1000)


def test_predict_preprocessing_is_the_cache_preprocessing(tiny_cohort):
    from gliofed.data.transforms import preprocess_pipeline

    row = read_manifest(tiny_cohort / "manifest.csv").iloc[3]
    case = {"subject_id": row["subject_id"], **{m: row[m] for m in MODALITIES}}
    cached = preprocess_pipeline(24, with_seg=False)(dict(case))["image"]
    ours = inference_pipeline(MODALITIES, 24)(dict(case))["image"].as_tensor().permute(0, 3, 2, 1)
    torch.testing.assert_close(ours, torch.as_tensor(cached).float())


def test_cli_predict_writes_a_mask_on_the_flair_grid_for_one_synthetic_case(tiny_cohort, tmp_path, capsys):
    row = read_manifest(tiny_cohort / "manifest.csv").iloc[0]
    checkpoint = _checkpoint(tmp_path / "model.safetensors")
    args = [f"--{m}={row[m]}" for m in MODALITIES]
    assert main(["predict", str(checkpoint), *args, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    subject = subject_name(row["flair"])
    flair, saved = nib.load(row["flair"]), nib.load(tmp_path / "out" / f"{subject}_seg.nii.gz")
    assert saved.shape == flair.shape and np.array_equal(saved.affine, flair.affine)
    assert set(np.unique(np.asarray(saved.dataobj))) <= {0, 1, 2, 4}
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(table["subject"]) == [subject] and {"p_idh_mutant", "grade_predicted"} <= set(table)
    assert f"{subject}_seg.nii.gz" in capsys.readouterr().out


def test_cli_predict_manifest_writes_one_row_per_case(tiny_cohort, tmp_path):
    manifest = read_manifest(tiny_cohort / "manifest.csv").head(2)
    manifest[["subject_id", *MODALITIES]].to_csv(tmp_path / "new.csv", index=False)
    checkpoint = _checkpoint(tmp_path / "model.safetensors", modalities=("t1", "t2"))
    assert main(["predict", str(checkpoint), "--manifest", str(tmp_path / "new.csv"), "--out",
                 str(tmp_path / "out"), "--device", "cpu"]) == 0
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(table["subject"]) == list(manifest["subject_id"])
    assert all((tmp_path / "out" / f"{s}_markers.json").is_file() for s in manifest["subject_id"])


def test_cli_predict_names_the_missing_modality_in_one_line(tiny_cohort, tmp_path, capsys):
    row = read_manifest(tiny_cohort / "manifest.csv").iloc[0]
    checkpoint = _checkpoint(tmp_path / "model.safetensors")
    assert main(["predict", str(checkpoint), "--t1", row["t1"], "--t2", row["t2"], "--flair", row["flair"],
                 "--subject", "p1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gliofed: error: subject p1: the model needs t1, t1ce, t2, flair but t1ce is missing."
    assert not (tmp_path / "out").exists()


def test_cli_predict_refuses_another_size_than_the_checkpoints(tiny_cohort, tmp_path, capsys):
    row = read_manifest(tiny_cohort / "manifest.csv").iloc[0]
    checkpoint = _checkpoint(tmp_path / "model.safetensors", size=32)
    assert main(["predict", str(checkpoint), *[f"--{m}={row[m]}" for m in MODALITIES], "--size", "128",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained on 32x32 in-plane inputs but --size 128 was given" in err and "\n" not in err


def test_postprocessing_drops_small_components_or_keeps_the_largest():
    labels = np.zeros((7, 8, 9), np.uint8)
    labels[0:3, 0:3, 0:3] = 2  # 27 voxels
    labels[1, 1, 1] = 4
    labels[5:7, 6:8, 7:9] = 1  # 8 voxels
    labels[6, 0, 8] = 2  # 1 voxel
    assert (postprocess_mask(labels) == labels).all()
    cleaned = postprocess_mask(labels, min_voxels=5)
    assert cleaned[6, 0, 8] == 0 and (cleaned[5:7, 6:8, 7:9] == 1).all() and cleaned[1, 1, 1] == 4
    largest = postprocess_mask(labels, keep_largest=True)
    assert set(np.unique(largest[labels > 0])) == {0, 2, 4} and (largest > 0).sum() == 27
