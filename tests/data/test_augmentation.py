"""The training augmentation on the device draws what MONAI's per-case pipeline draws, and applies it the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import AdjustContrast, Flip, ScaleIntensity
from scipy import stats
from torch.utils.data import Dataset

from gliofed.config import TrainConfig
from gliofed.data.dataset import collate_cases
from gliofed.data.transforms import AUGMENTATION, AugmentDraws, augment_batch, draw_augmentation
from gliofed.engine import TrainBatches

#: a (C, D, H, W) probe whose augmented copy reveals its draws: values -1 (min), 0 and 1 (max) at known places
PROBE_SHAPE = (2, 3, 4, 5)
MAX_AT, MID_AT = (0, 1, 2, 0), (1, 2, 1, 2)  # the max sits at w = 0: a flip moves it to w = 4
CASES = 2400


def _probe() -> torch.Tensor:
    probe = torch.linspace(-0.9, 0.9, int(np.prod(PROBE_SHAPE))).reshape(PROBE_SHAPE)
    probe[0, 0, 0, 0] = -1.0
    probe[MAX_AT] = 1.0
    probe[MID_AT] = 0.0
    return probe


class Probes(Dataset):
    """``CASES`` copies of the probe as training samples."""

    def __len__(self) -> int:
        return CASES

    def __getitem__(self, i: int) -> dict:
        return {"image": _probe(), "seg": torch.zeros((1, *PROBE_SHAPE[1:]), dtype=torch.int64),
                "has_mask": torch.tensor(True), "labels": torch.zeros(4, dtype=torch.int64)}


def _read_draws(batch_images: torch.Tensor) -> dict[str, np.ndarray]:
    """(flip, scale, gamma) of augmented probes: a flip moves the max to w = 4; the max voxel holds the scale
    s = 1 + f; the mid voxel holds s * (2 * 0.5 ** g - 1), so g = log2(2 / (mid / s + 1))."""
    x = batch_images.double()
    flipped = (MAX_AT[0], MAX_AT[1], MAX_AT[2], PROBE_SHAPE[3] - 1 - MAX_AT[3])
    mid_flipped = (MID_AT[0], MID_AT[1], MID_AT[2], PROBE_SHAPE[3] - 1 - MID_AT[3])
    flip = (x[:, flipped[0], flipped[1], flipped[2], flipped[3]] > x[:, MAX_AT[0], MAX_AT[1], MAX_AT[2], MAX_AT[3]])
    scale = torch.where(flip, x[(slice(None), *flipped)], x[(slice(None), *MAX_AT)])
    mid = torch.where(flip, x[(slice(None), *mid_flipped)], x[(slice(None), *MID_AT)])
    gamma = torch.log2(2.0 / (mid / scale + 1.0))
    return {"flip": flip.numpy(), "scale": scale.numpy(), "gamma": gamma.numpy()}


def _engine_draws(augment_on: str) -> dict[str, np.ndarray]:
    config = TrainConfig(batch_size=200, augment=True, augment_on=augment_on, device="cpu", seed=3)
    batches = TrainBatches(Probes(), config, torch.device("cpu"))
    return _read_draws(torch.cat([batch["image"] for batch in batches.epoch(0)]))


@pytest.fixture(scope="module")
def draws() -> dict[str, dict[str, np.ndarray]]:
    """What the engine drew on the device and what MONAI's pipeline drew in the loader, over the same probes."""
    return {"device": _engine_draws("device"), "loader": _engine_draws("loader")}


def _applied(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"flip": sample["flip"], "scale": np.abs(sample["scale"] - 1) > 1e-6,
            "gamma": np.abs(sample["gamma"] - 1) > 1e-4}


@pytest.mark.parametrize("kind", ["flip", "scale", "gamma"])
def test_device_augmentation_applies_each_step_as_often_as_monai(draws, kind):
    device, loader = _applied(draws["device"])[kind], _applied(draws["loader"])[kind]
    expected = AUGMENTATION[f"{kind}_prob"]
    for sample in (device, loader):
        assert stats.binomtest(int(sample.sum()), len(sample), expected).pvalue > 1e-3
    table = [[device.sum(), len(device) - device.sum()], [loader.sum(), len(loader) - loader.sum()]]
    assert stats.chi2_contingency(table).pvalue > 1e-3


@pytest.mark.parametrize("kind, low, high", [("scale", 1 - AUGMENTATION["scale"], 1 + AUGMENTATION["scale"]),
                                             ("gamma", *AUGMENTATION["gamma"])])
def test_device_augmentation_draws_the_same_scales_and_gammas_as_monai(draws, kind, low, high):
    device = draws["device"][kind][_applied(draws["device"])[kind]]
    loader = draws["loader"][kind][_applied(draws["loader"])[kind]]
    assert stats.ks_2samp(device, loader).pvalue > 1e-3
    for sample in (device, loader):
        assert low - 1e-5 <= sample.min() and sample.max() <= high + 1e-5
        assert stats.kstest(sample, stats.uniform(low, high - low).cdf).pvalue > 1e-3


def test_device_augmentation_reproduces_with_the_seed_and_changes_with_the_epoch():
    first = draw_augmentation(64, torch.Generator().manual_seed(5))
    again = draw_augmentation(64, torch.Generator().manual_seed(5))
    other = draw_augmentation(64, torch.Generator().manual_seed(6))
    assert torch.equal(first.gamma_value, again.gamma_value) and torch.equal(first.flip, again.flip)
    assert not torch.equal(first.gamma_value, other.gamma_value)


def test_augment_batch_computes_what_monai_computes_on_the_unpadded_case():
    torch.manual_seed(0)
    short, deep = torch.randn(2, 5, 6, 7), torch.randn(2, 8, 6, 7)
    seg = torch.randint(0, 4, (1, 5, 6, 7))
    batch = collate_cases([{"image": short, "seg": seg}, {"image": deep, "seg": torch.zeros(1, 8, 6, 7).long()}])
    draws = AugmentDraws(flip=torch.tensor([True, False]), scale=torch.tensor([True, False]),
                         factor=torch.tensor([0.07, 0.0], dtype=torch.float64), gamma=torch.tensor([True, False]),
                         gamma_value=torch.tensor([0.85, 1.0], dtype=torch.float64))
    image = batch["image"].clone()
    augment_batch(image, batch["seg"], draws, batch["region"])
    expected = AdjustContrast(gamma=0.85)(ScaleIntensity(minv=None, maxv=None, factor=0.07)(Flip(2)(short)))
    (d0, d1), _, _ = batch["region"][0].tolist()
    torch.testing.assert_close(image[0][:, d0:d1], torch.as_tensor(expected), rtol=0, atol=1e-6)
    assert image[0][:, :d0].abs().sum() == 0 and image[0][:, d1:].abs().sum() == 0  # the padding stays zero
    assert torch.equal(batch["seg"][0][:, d0:d1], torch.as_tensor(Flip(2)(seg)))
    assert torch.equal(image[1], batch["image"][1])  # nothing drawn: untouched
