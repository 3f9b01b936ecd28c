"""Patient-level train/test splits, stratified by site, seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from gliofed.errors import ConfigError

__all__ = ["assign_splits"]


def assign_splits(manifest: pd.DataFrame, test_size: float = 0.3, seed: int = 0,
                  external_site: str | None = None) -> pd.Series:
    """Assign ``train`` / ``test`` per subject (one subject = one patient), stratified by site.

    Args:
        manifest: rows with ``subject_id`` and ``site``.
        test_size: fraction of each site's subjects in ``test`` (default 0.3, the seed's 70/30).
        seed: reproduces the split.
        external_site: a site held out whole as ``external`` (never trained on), or ``None``.

    Returns:
        Series of split names aligned with ``manifest.index``.

    >>> assign_splits(pd.DataFrame({"subject_id": list("abcdef"), "site": ["x"] * 3 + ["y"] * 3}))  # doctest: +SKIP
    """
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"test_size {test_size} must lie strictly between 0 and 1.")
    if external_site is not None and external_site not in set(manifest["site"]):
        raise ConfigError(f"external site {external_site!r} is not a site of this manifest.")
    splits = pd.Series("train", index=manifest.index, dtype=object)
    for site_index, (site, group) in enumerate(manifest.groupby("site", sort=True)):
        if site == external_site:
            splits[group.index] = "external"
            continue
        if len(group) < 2:
            continue  # a single subject cannot be split; it trains
        n_test = min(len(group) - 1, max(1, int(round(test_size * len(group)))))
        _, test_index = train_test_split(group.index.to_numpy(), test_size=n_test,
                                         random_state=np.random.RandomState([seed, site_index]))
        splits[test_index] = "test"
    return splits
