"""The site's real cases as condensation reads them, one at a time (never leaves the site)."""

from __future__ import annotations

__all__ = ["real_batches"]


def real_batches(dataset, indices):
    """(image (1, C, D, H, W), seg, has_mask, label vector) of each real case ``indices`` of ``dataset``."""
    for i in indices:
        sample = dataset[int(i)]
        yield sample["image"][None], sample["seg"], bool(sample["has_mask"]), sample["labels"]
