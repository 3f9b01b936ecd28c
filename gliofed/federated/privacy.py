"""Privacy audit of what left a site: is any uploaded synthetic volume a near-copy of a real patient?

For every uploaded synthetic volume: its highest Pearson correlation with any of the site's real volumes
(nearest neighbour), compared with the real-to-real distribution (each real volume's highest correlation
with another real volume of the same site). A synthetic volume closer to a real patient than real
patients typically are to each other (above the real-to-real ``quantile``, default the 95th percentile)
is flagged. Volumes are compared after resampling to a common 16^3 grid (area averaging).

The audit needs the real volumes, so it runs inside the site (:meth:`Site.privacy_audit`); only its
report leaves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

__all__ = ["GRID", "volume_vectors", "nearest_neighbour_audit"]

#: common comparison grid
GRID = (16, 16, 16)


def volume_vectors(images: torch.Tensor) -> np.ndarray:
    """(N, C, D, H, W) volumes -> (N, C*16^3) vectors on the common grid."""
    small = F.interpolate(images.float(), size=GRID, mode="area")
    return small.reshape(small.shape[0], -1).numpy()


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-8)
    b = (b - b.mean(1, keepdims=True)) / (b.std(1, keepdims=True) + 1e-8)
    return a @ b.T / a.shape[1]


def nearest_neighbour_audit(synthetic: np.ndarray, real: np.ndarray, real_ids: list[str], site: str,
                            quantile: float = 0.95) -> pd.DataFrame:
    """One row per synthetic volume: ``site``, ``synthetic``, ``nn_corr`` (highest correlation with a real
    volume), ``nn_subject``, ``real_to_real_q`` (the real-to-real quantile), ``percentile`` (where nn_corr
    falls in the real-to-real distribution) and ``flagged``."""
    cross = _correlations(synthetic, real)
    if len(real) > 1:
        within = _correlations(real, real)
        np.fill_diagonal(within, -np.inf)
        real_nn = within.max(1)
    else:
        real_nn = np.array([1.0])
    threshold = float(np.quantile(real_nn, quantile))
    rows = []
    for i in range(len(synthetic)):
        j = int(cross[i].argmax())
        value = float(cross[i, j])
        rows.append({"site": site, "synthetic": i, "nn_corr": value, "nn_subject": real_ids[j],
                     "real_to_real_q": threshold, "percentile": float((real_nn < value).mean() * 100),
                     "flagged": bool(value >= threshold)})
    return pd.DataFrame(rows)
