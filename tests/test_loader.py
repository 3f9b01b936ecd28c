"""engine.make_loader: augmentations differ across worker processes and a seed reproduces them."""

from __future__ import annotations

import torch
from monai.transforms import RandomizableTransform
from torch.utils.data import Dataset

from gliofed.engine import make_loader


class DrawNoise(RandomizableTransform):
    """Adds one random draw to the sample: what an augmentation's random state produces."""

    def __call__(self, sample: dict) -> dict:
        self.randomize(None)
        return {**sample, "draw": torch.tensor([self.R.random()])}


class Cases(Dataset):
    """Minimal samples of the shape make_loader's collate expects (different depths), with a random transform."""

    def __init__(self, n: int = 6) -> None:
        self.n = n
        self.transform = DrawNoise()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        depth = 3 + i % 2
        sample = {"image": torch.zeros(1, depth, 4, 5), "seg": torch.zeros(1, depth, 4, 5, dtype=torch.int64),
                  "has_mask": torch.tensor(True), "labels": torch.zeros(4, dtype=torch.int64), "index": i}
        return self.transform(sample)


def _draws(seed: int, workers: int) -> list[float]:
    loader = make_loader(Cases(), batch_size=1, shuffle=False, seed=seed, num_workers=workers)
    return [float(batch["draw"][0, 0]) for batch in loader]


def test_two_workers_draw_different_augmentations_reproducibly():
    first = _draws(seed=3, workers=2)
    # with 2 workers and batch size 1, cases 0, 2, 4 come from worker 0 and 1, 3, 5 from worker 1: a plain torch
    # DataLoader copies one random state into both, so case 0 and case 1 would get the same draw
    assert len(set(first)) == len(first)
    assert first == _draws(seed=3, workers=2)
    assert first != _draws(seed=4, workers=2)
