"""Grad-CAM (Captum LayerGradCam) per head and the localisation score."""

import numpy as np
import pytest
import torch
from torch import nn

from gliofed.data import CaseDataset
from gliofed.errors import ConfigError
from gliofed.explain import (
    explain_dataset,
    grad_cam,
    localisation_score,
    summarise_localisation,
)
from gliofed.model import MultiTaskUNet

SHAPE = (7, 9, 11)  # unequal odd sizes: a swapped axis changes the shape or misplaces the tumour
TUMOUR = (slice(1, 4), slice(5, 9), slice(1, 4))


class PlantedTumourNet(nn.Module):
    """A toy with the MultiTaskUNet output dict whose only feature fires on bright T1ce voxels (the tumour)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv3d(4, 2, kernel_size=1)
        self.seg_head = nn.Conv3d(2, 4, kernel_size=1)
        self.idh = nn.Linear(2, 2)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.bias.fill_(-1.0)
            self.features.weight[0, 1] = 1.0  # feature 0 = T1ce - 1: positive only inside the tumour
            self.seg_head.weight.zero_()
            self.seg_head.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0]))
            self.seg_head.weight[2, 0] = 2.0  # oedema logit where the feature fires
            self.idh.weight.zero_()
            self.idh.bias.zero_()
            self.idh.weight[1, 0] = 10.0

    def forward(self, x):
        f = torch.relu(self.features(x))
        return {"seg": self.seg_head(f), "idh": self.idh(f.mean((2, 3, 4)))}


def planted_batch(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.1, (batch, 4, *SHAPE)).astype(np.float32)
    x[(slice(None), 1, *TUMOUR)] = 3.0
    mask = np.zeros(SHAPE, bool)
    mask[TUMOUR] = True
    return torch.from_numpy(x), mask


@pytest.mark.parametrize("target", ["seg", "idh", "codeletion", "mgmt", "grade"])
def test_map_shape_equals_input_for_every_head(target):
    model = MultiTaskUNet(features=(4, 8, 8, 8), hidden=8)
    x = torch.randn(2, 4, *SHAPE)
    cam = grad_cam(model, x, target)
    assert cam.shape == (2, 1, *SHAPE)
    assert torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1


def test_model_mode_is_restored():
    model = MultiTaskUNet(features=(4, 8, 8, 8), hidden=8).train()
    grad_cam(model, torch.randn(1, 4, *SHAPE), "grade")
    assert model.training


@pytest.mark.parametrize("target", ["seg", "idh"])
def test_planted_tumour_is_highlighted_more_than_background(target):
    x, mask = planted_batch()
    cam = grad_cam(PlantedTumourNet(), x, target, target_class=1 if target == "idh" else None, layer="features")
    for b in range(len(x)):
        inside, outside = cam[b, 0].numpy()[mask], cam[b, 0].numpy()[~mask]
        assert inside.mean() > 5 * outside.mean()
        score = localisation_score(cam[b, 0], mask, top_percent=5)
        assert score["top_share"] == 1.0 and score["pointing_hit"] == 1.0


def test_layer_that_does_not_feed_the_head_is_a_clear_error():
    model = MultiTaskUNet(features=(4, 8, 8, 8), hidden=8)
    with pytest.raises(ConfigError, match="does not feed"):
        grad_cam(model, torch.randn(1, 4, *SHAPE), "idh", layer="upcat_1")
    with pytest.raises(ConfigError, match="not part of the model"):
        grad_cam(model, torch.randn(1, 4, *SHAPE), "idh", layer="nope")


def test_localisation_score_counts_the_hottest_voxels():
    cam = np.zeros((2, 5, 10))
    cam.flat[:10] = np.arange(10, 0, -1)  # ten hottest voxels, hottest first
    mask = np.zeros_like(cam, bool)
    mask.flat[:3] = True  # three of them in the tumour, the hottest included
    score = localisation_score(cam, mask, top_percent=10)  # 10 % of 100 voxels
    assert score == {"top_share": 0.3, "chance": 0.03, "pointing_hit": 1.0, "empty": 0.0}
    brain = np.zeros_like(mask)
    brain.flat[:20] = True
    assert localisation_score(cam, mask, brain, top_percent=50)["chance"] == pytest.approx(3 / 20)
    with pytest.raises(ConfigError, match="differ in shape"):
        localisation_score(cam, mask[0])


def test_an_all_zero_map_is_empty_not_scored():
    mask = np.zeros((3, 4, 5), bool)
    mask[1, 1:3, 1:3] = True
    score = localisation_score(np.zeros(mask.shape), mask)
    assert score["empty"] == 1.0 and np.isnan(score["top_share"]) and np.isnan(score["pointing_hit"])
    assert score["chance"] == pytest.approx(mask.mean())


def test_default_layers():
    from gliofed.explain import default_layer

    assert default_layer("seg") == "upcat_1" and default_layer("grade") == "down_3"


def test_explain_dataset_scores_masked_cases_only(tiny_cache):
    test = CaseDataset(tiny_cache, split="test")
    model = MultiTaskUNet(features=(4, 8, 8, 8), hidden=8)
    scores = explain_dataset(model, test, targets=("seg", "grade"), progress=False)
    masked = int(test.index["has_mask"].sum())
    assert 0 < masked < len(test)  # the tiny cohort's REMBRANDT site has no masks
    assert len(scores) == 2 * masked
    scored = scores[scores["empty"] == 0]
    assert scored["top_share"].between(0, 1).all() and scores["chance"].gt(0).all()
    assert scores.loc[scores["empty"] == 1, "top_share"].isna().all()
    summary = summarise_localisation(scores)
    assert list(summary.index) == ["seg", "grade"] and (summary["n"] == masked).all()
    assert np.allclose(summary["lift"], summary["top_share"] / summary["chance"], equal_nan=True)
    assert (summary["empty_maps"] == scores.groupby("target", sort=False)["empty"].sum()).all()
