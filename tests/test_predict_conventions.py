"""`gliofed predict` writes each case's mask in its dataset's own label convention: BraTS 2017-2021 (enhancing
tumour 4), BraTS 2023+ (3, detected from the -t1n/-t1c/-t2w/-t2f names or the manifest), MSD (its own order)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from gliofed.config import TrainConfig
from gliofed.data.cache import PREPROCESS_VERSION
from gliofed.inference import Predictor, predict_cases, subject_name
from gliofed.model import build_model
from gliofed.runs import save_checkpoint
from gliofed.vocab import MODALITIES

NAMES = {"brats": ("_", ("t1", "t1ce", "t2", "flair")), "brats2023": ("-", ("t1n", "t1c", "t2w", "t2f"))}


class CoreAndEnhancing(torch.nn.Module):
    """Stand-in network: necrotic core (class 1) where the z-scored FLAIR is very bright, enhancing tumour (class 3)
    where it is bright, oedema (2) nowhere. What it outputs is known, so the labels written test the convention."""

    def forward(self, x):
        flair = x[:, MODALITIES.index("flair")]
        core, enhancing = (flair > 3.0).float(), ((flair > 1.5) & (flair <= 3.0)).float()
        zeros = torch.zeros_like(flair)
        seg = torch.stack([1 - core - enhancing, core, zeros, enhancing], 1)
        return {"seg": seg, "idh": torch.zeros(1, 2), "codeletion": torch.zeros(1, 2), "mgmt": torch.zeros(1, 2),
                "grade": torch.zeros(1, 3)}


def _case(folder, subject, naming, shape=(15, 13, 9)):
    """Four contrasts named in ``naming``'s way: a bright FLAIR shell (enhancing) around a brighter centre (core)."""
    separator, names = NAMES[naming]
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.indices(shape)
    distance = np.sqrt(sum((grid[i] - (np.array(shape) - 1)[i] / 2) ** 2 for i in range(3)))
    rng = np.random.default_rng(0)
    paths = {}
    for contrast, name in zip(MODALITIES, names):
        data = 100 + rng.normal(0, 1, shape)
        if contrast == "flair":
            data = np.where(distance <= 3.5, 300.0, data)
            data = np.where(distance <= 1.5, 600.0, data)
        paths[contrast] = str(folder / f"{subject}{separator}{name}.nii.gz")
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), paths[contrast])
    return paths


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = TrainConfig(model={"features": (4, 8, 16, 32), "hidden": 8}, device="cpu")
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(folder / "model.safetensors", build_model(config), config,
                           preprocessing={"size": 12, "modalities": list(MODALITIES), "version": PREPROCESS_VERSION})


def _predictor(checkpoint, **kwargs):
    predictor = Predictor(checkpoint, device="cpu", **kwargs)
    predictor.model = CoreAndEnhancing()
    return predictor


@pytest.mark.parametrize("naming,labels", [("brats", {0, 1, 4}), ("brats2023", {0, 1, 3})])
def test_the_file_names_choose_the_labels_written(naming, labels, checkpoint, tmp_path):
    paths = _case(tmp_path / "scans", "case1", naming)
    predictor = _predictor(checkpoint)
    result = predictor.predict_case("case1", paths)
    row = predictor.write_case("case1", result, tmp_path / "out")
    written = np.asarray(nib.load(tmp_path / "out" / "case1_seg.nii.gz").dataobj)
    assert set(np.unique(written)) == labels and set(np.unique(result["labels"])) == {0, 1, 3}
    assert row["label_convention"] == naming and row["volume_ET_ml"] > 0 and row["volume_TC_ml"] > row["volume_ET_ml"]
    assert json.loads((tmp_path / "out" / "case1_markers.json").read_text())["label_convention"] == naming


def test_a_manifests_label_convention_is_used_for_its_cases(checkpoint, tmp_path):
    paths = _case(tmp_path / "scans", "BRATS_001", "brats")
    cases = [{"subject_id": "BRATS_001", **paths, "label_convention": "msd"}]
    predictor = _predictor(checkpoint)
    written = predictor.write_case("BRATS_001", predictor.predict_case("BRATS_001", cases[0]), tmp_path / "out")
    mask = np.asarray(nib.load(written["seg"]).dataobj)
    assert set(np.unique(mask)) == {0, 2, 3}  # MSD: 2 non-enhancing (gliofed's core), 3 enhancing


def test_the_label_convention_option_overrides_the_names(checkpoint, tmp_path):
    paths = _case(tmp_path / "scans", "BraTS-GLI-00000-000", "brats2023")
    predictor = _predictor(checkpoint, label_convention="brats")
    assert set(np.unique(predictor.predict_case("x", paths)["seg"])) == {0, 1, 4}


def test_an_unknown_label_convention_is_refused_before_any_work(checkpoint, tmp_path):
    paths = _case(tmp_path / "scans", "case1", "brats")
    from gliofed.errors import DataError

    with pytest.raises(DataError, match="subject case1: label convention 'brats2019' is not one of"):
        predict_cases(checkpoint, [{"subject_id": "case1", **paths, "label_convention": "brats2019"}],
                      tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_brats2023_file_names_give_the_case_name():
    assert subject_name("data/BraTS-GLI-00000-000-t2f.nii.gz") == "BraTS-GLI-00000-000"
    assert subject_name("Brats18_CBICA_AAB_1_flair.nii.gz") == "Brats18_CBICA_AAB_1"


def test_read_cases_keeps_the_manifests_label_convention(tmp_path):
    from gliofed.inference import read_cases

    pd.DataFrame({"subject_id": ["a", "b"], "t1": ["a.nii.gz", "b.nii.gz"],
                  "label_convention": ["brats2023", ""]}).to_csv(tmp_path / "m.csv", index=False)
    assert [c["label_convention"] for c in read_cases(tmp_path / "m.csv")] == ["brats2023", ""]
