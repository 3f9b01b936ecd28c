"""Robust aggregation of the sites' weights: the coordinate-wise median and the coordinate-wise trimmed mean (Yin et
al., "Byzantine-robust distributed learning", ICML 2018), as Flower's ``FedMedian`` and ``FedTrimmedAvg`` compute
them: unweighted, so that one site claiming many cases cannot buy the result either.

Validation (:func:`~gliofed.federated.protocol.validate_reply`) already refuses a reply that is not finite, holds a
negative variance or reaches beyond a bound derived from the sent model; within those bounds a site can still send
an update scaled up many times. The default weighted mean follows it by its share; the median of three or more sites
and the trimmed mean (``trim`` of the sites cut at each end, per coordinate) do not.
"""

from __future__ import annotations

import numpy as np

from gliofed.errors import ConfigError

__all__ = ["AGGREGATIONS", "coordinate_median", "trimmed_mean", "check_aggregation"]

#: aggregations FedAvg and FedProx offer: ``mean`` (case-weighted, the default), ``median``, ``trimmed-mean``
AGGREGATIONS = ("mean", "median", "trimmed-mean")


def check_aggregation(aggregation: str, trim: float) -> None:
    """Refuse an aggregation that is not one of :data:`AGGREGATIONS`, or a ``trim`` outside [0, 0.5).

    Raises:
        ConfigError: one sentence naming the value.
    """
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}.")
    if isinstance(trim, bool) or not isinstance(trim, int | float) or not 0 <= float(trim) < 0.5:
        raise ConfigError(f"trim {trim!r} is not a fraction in [0, 0.5).")


def _stacked(updates: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    return np.stack([np.asarray(u[name], dtype=np.float64) for u in updates])


def coordinate_median(updates: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The coordinate-wise median of every ``w:`` array over the sites (integer buffers rounded back).

    Args:
        updates: one ``{name: array}`` per site, all with the same names, shapes and dtypes (validated replies).

    Returns:
        the aggregated arrays, each in its input dtype.

    >>> coordinate_median([{"w:x": np.array([1.0])}, {"w:x": np.array([2.0])}, {"w:x": np.array([1e6])}])["w:x"]
    array([2.])
    """
    out = {}
    for name, first in updates[0].items():
        value = np.median(_stacked(updates, name), axis=0)
        out[name] = (np.rint(value) if first.dtype.kind in "iu" else value).astype(first.dtype)
    return out


def trimmed_mean(updates: list[dict[str, np.ndarray]], trim: float = 0.2) -> dict[str, np.ndarray]:
    """The coordinate-wise trimmed mean of every ``w:`` array: per coordinate, ``int(trim * n)`` of the ``n`` sites'
    values are cut at each end and the rest averaged (:func:`scipy.stats.trim_mean`; with ``trim`` 0.2 it cuts one
    site at each end from five sites on, none below).

    Args:
        updates: as :func:`coordinate_median`.
        trim: the fraction cut at each end (default 0.2, Flower's ``FedTrimmedAvg`` beta).

    Returns:
        the aggregated arrays, each in its input dtype.
    """
    from scipy.stats import trim_mean

    out = {}
    for name, first in updates[0].items():
        value = trim_mean(_stacked(updates, name), proportiontocut=trim, axis=0)
        out[name] = (np.rint(value) if first.dtype.kind in "iu" else value).astype(first.dtype)
    return out
