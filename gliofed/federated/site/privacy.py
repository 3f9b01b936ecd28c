"""Privacy audit of what left a site: is any uploaded synthetic volume a near-copy of a real patient?

For every uploaded synthetic volume: its highest Pearson correlation with any of the site's real volumes
(nearest neighbour), compared with the real-to-real distribution (each real volume's highest correlation
with another real volume of the same site). A synthetic volume closer to a real patient than real
patients typically are to each other (above the real-to-real ``quantile``, default the 95th percentile)
is flagged; the threshold never drops below ``min_corr`` (default 0.5), because with few real cases the
mean-centred real-to-real correlations are biased low (n = 3 residuals sum to zero).

Comparison space: the payload's own low-resolution grid (real volumes are area-downsampled to it, as an
attacker holding the payload would), after subtracting the site's mean real volume, so that the anatomy
all patients share does not dominate the correlation and what is compared is patient-specific.

The audit needs the real volumes, so it runs inside the site (:meth:`Site.privacy_audit`); only its
report leaves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

__all__ = ["volume_vectors", "nearest_neighbour_audit"]


def volume_vectors(images: torch.Tensor, grid: tuple[int, int, int]) -> np.ndarray:
    """(N, C, D, H, W) volumes -> (N, C * prod(grid)) vectors, area-resampled to ``grid``."""
    small = F.interpolate(images.float(), size=tuple(grid), mode="area")
    return small.reshape(small.shape[0], -1).numpy()


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-8)
    b = (b - b.mean(1, keepdims=True)) / (b.std(1, keepdims=True) + 1e-8)
    return a @ b.T / a.shape[1]


def nearest_neighbour_audit(synthetic: np.ndarray, real: np.ndarray, real_ids: list[str], site: str,
                            quantile: float = 0.95, min_corr: float = 0.5) -> pd.DataFrame:
    """One row per synthetic volume: ``site``, ``synthetic``, ``nn_corr`` (highest correlation with a real
    volume), ``nn_subject``, ``real_to_real_q`` (the real-to-real quantile), ``threshold``
    (max(real_to_real_q, min_corr)), ``percentile`` (where nn_corr falls in the real-to-real distribution)
    and ``flagged`` (nn_corr >= threshold)."""
    mean = real.mean(0, keepdims=True)  # shared anatomy out: compare what is patient-specific
    synthetic, real = synthetic - mean, real - mean
    cross = _correlations(synthetic, real)
    if len(real) > 1:
        within = _correlations(real, real)
        np.fill_diagonal(within, -np.inf)
        real_nn = within.max(1)
    else:
        real_nn = np.array([1.0])
    real_q = float(np.quantile(real_nn, quantile))
    threshold = max(real_q, min_corr)
    rows = []
    for i in range(len(synthetic)):
        j = int(cross[i].argmax())
        value = float(cross[i, j])
        rows.append({"site": site, "synthetic": i, "nn_corr": value, "nn_subject": real_ids[j],
                     "real_to_real_q": real_q, "threshold": threshold,
                     "percentile": float((real_nn < value).mean() * 100),
                     "flagged": bool(value >= threshold)})
    return pd.DataFrame(rows)
