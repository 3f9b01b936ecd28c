"""Prediction tables for tests of metrics and thresholds (the columns :func:`gliofed.engine.predict` writes)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def miscalibrated_predictions(seed: int = 0, n: int = 80) -> pd.DataFrame:
    """A well-ranked but miscalibrated IDH head: every probability below 0.5, mutants always higher (AUC 1); the other
    markers unlabelled at uniform probabilities."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    p = np.where(y == 1, 0.3, 0.1) + rng.uniform(0, 0.05, n)
    frame = pd.DataFrame({"subject": [f"s{i}" for i in range(n)], "site": "a", "has_mask": False, "idh": y,
                          "p_idh_0": 1 - p, "p_idh_1": p})
    for marker, k in (("codeletion", 2), ("mgmt", 2), ("grade", 3)):
        frame[marker] = -1
        for c in range(k):
            frame[f"p_{marker}_{c}"] = 1 / k
    return frame
