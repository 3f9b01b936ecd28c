"""Seed-level statistics for strategy comparisons: the seed (a new cohort and a new training run) is the unit of
replication, so every interval and test here is over seeds.

* :func:`t_interval`: a strategy's mean over seeds with its 95 % Student-t interval.
* :func:`paired_test`: the paired difference ``a - b`` over seeds: mean, 95 % t-interval, paired t-test
  (:func:`scipy.stats.ttest_rel`, two-sided).
* :func:`ratio_interval`: the ratio of means ``mean(a) / mean(b)`` over paired seeds, by **Fieller's theorem**
  (the set of ratios rho whose paired t-test of ``a - rho * b`` is not rejected; exact under normality, and it
  can be unbounded when ``mean(b)`` is not clearly away from 0), or the **log-ratio t-interval** (a t-interval of
  ``mean(log(a_i / b_i))``, exponentiated: an interval for the geometric mean of the per-seed ratios).
* :func:`two_level_bootstrap`: a percentile interval that resamples seeds, then test cases within each chosen
  seed (an addition: it mixes training and scoring noise; the t-based figures above are the decision's).
* :func:`difference_verdict`, :func:`ratio_verdict`: the preregistered decision rules
  (``benchmarks/PREREGISTRATION.md``) as functions.

>>> round(t_interval([0.6, 0.7, 0.8]).lo, 4)
0.4516
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Interval", "PairedTest", "RatioInterval", "t_interval", "paired_test", "ratio_interval",
           "two_level_bootstrap", "difference_verdict", "ratio_verdict", "finite_pairs"]


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds with its interval (NaN bounds for fewer than 2 seeds)."""

    mean: float
    lo: float
    hi: float
    n: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """``{prefix + field: value}`` (for a table row)."""
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PairedTest:
    """The paired difference ``a - b`` over ``n`` seeds: mean, t-interval, t statistic and two-sided p-value."""

    diff: float
    lo: float
    hi: float
    t: float
    p: float
    n: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RatioInterval:
    """``mean(a) / mean(b)`` (Fieller) or the geometric mean of ``a_i / b_i`` (log-ratio) with its interval;
    ``bounded`` is False where the interval is not a finite interval (Fieller: ``mean(b)`` not clearly away from
    0; bounds are then NaN)."""

    ratio: float
    lo: float
    hi: float
    n: int
    method: str
    bounded: bool

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def finite_pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(a_i, b_i)`` where both are finite (a seed where either strategy has no score is left out of a
    paired comparison; the count is reported as ``n``).

    Raises:
        ValueError: ``a`` and ``b`` differ in length."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, not {a.shape} and {b.shape}.")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean over seeds and its Student-t interval (``mean ± t(n-1) * sd / sqrt(n)``); non-finite values are left
    out. NaN mean for no value, NaN bounds for one.

    Args:
        values: one score per seed.
        confidence: coverage (default 0.95).
    """
    x = np.asarray([v for v in np.asarray(values, float) if np.isfinite(v)], float)
    if not len(x):
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, float("nan"), float("nan"), 1)
    half = _t_quantile(confidence, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half, len(x))


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedTest:
    """Paired comparison of two strategies over the same seeds: the mean of ``a_i - b_i``, its t-interval and the
    paired t-test (:func:`scipy.stats.ttest_rel`, two-sided). Pairs with a non-finite member are left out.

    Differences that are all equal (up to rounding) give a degenerate interval at the mean difference and p = 0
    where it is not 0 (1 where it is), rather than scipy's NaN or a warning.

    Args:
        a, b: one score per seed each, in the same seed order.
        confidence: coverage of the interval (default 0.95).
    """
    from scipy import stats

    x, y = finite_pairs(a, b)
    n = len(x)
    if n < 2:
        diff = float((x - y).mean()) if n else float("nan")
        return PairedTest(diff, float("nan"), float("nan"), float("nan"), float("nan"), n)
    d = x - y
    interval = t_interval(d, confidence)
    if float(d.std(ddof=1)) <= 1e-12 * max(1.0, abs(interval.mean)):  # identical differences (up to rounding)
        exact = abs(interval.mean) <= 1e-12
        t = 0.0 if exact else math.copysign(math.inf, interval.mean)
        return PairedTest(interval.mean, interval.mean, interval.mean, t, 1.0 if exact else 0.0, n)
    result = stats.ttest_rel(x, y)
    return PairedTest(interval.mean, interval.lo, interval.hi, float(result.statistic), float(result.pvalue), n)


def ratio_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                   method: str = "fieller") -> RatioInterval:
    """Interval for how ``a`` compares with ``b`` as a ratio, over paired seeds.

    ``method="fieller"`` (default): the ratio of means ``rho = mean(a) / mean(b)`` with Fieller's interval for
    paired data: every rho for which the paired t-test of ``a_i - rho * b_i`` (mean 0) is not rejected at
    ``1 - confidence``, i.e. the rho solving
    ``(mean(a) - rho mean(b))^2 <= t^2 (v_aa - 2 rho v_ab + rho^2 v_bb)`` with ``v`` the (co)variances of the
    means and ``t`` the Student quantile with n - 1 degrees of freedom. Where ``mean(b)^2 <= t^2 v_bb`` (the
    denominator is not significantly away from 0) the set is not a finite interval: ``bounded=False``, NaN bounds.

    ``method="log"``: the t-interval of ``mean(log(a_i / b_i))``, exponentiated (the geometric mean of the per-seed
    ratios); needs every value positive.

    Args:
        a, b: one score per seed each (pairs with a non-finite member are left out).
        confidence: coverage (default 0.95).
        method: ``"fieller"`` or ``"log"``.

    Raises:
        ValueError: an unknown method, or a non-positive value for ``"log"``.
    """
    x, y = finite_pairs(a, b)
    n = len(x)
    nan = float("nan")
    if method == "log":
        if n and ((x <= 0).any() or (y <= 0).any()):
            raise ValueError("the log-ratio interval needs positive values.")
        if n == 0:
            return RatioInterval(nan, nan, nan, 0, method, False)
        logs = t_interval(np.log(x / y), confidence)
        bounded = n >= 2
        return RatioInterval(math.exp(logs.mean), math.exp(logs.lo) if bounded else nan,
                             math.exp(logs.hi) if bounded else nan, n, method, bounded)
    if method != "fieller":
        raise ValueError(f"unknown ratio method {method!r}; use 'fieller' or 'log'.")
    if n == 0:
        return RatioInterval(nan, nan, nan, 0, method, False)
    ma, mb = float(x.mean()), float(y.mean())
    ratio = ma / mb if mb != 0 else nan
    if n < 2:
        return RatioInterval(ratio, nan, nan, n, method, False)
    t = _t_quantile(confidence, n - 1)
    cov = np.cov(np.stack([x, y]), ddof=1) / n
    vaa, vab, vbb = float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])
    # (mb^2 - t^2 vbb) rho^2 - 2 (ma mb - t^2 vab) rho + (ma^2 - t^2 vaa) <= 0
    qa, qb, qc = mb * mb - t * t * vbb, ma * mb - t * t * vab, ma * ma - t * t * vaa
    disc = qb * qb - qa * qc
    if qa <= 0 or disc < 0:
        return RatioInterval(ratio, nan, nan, n, method, False)
    root = math.sqrt(disc)
    return RatioInterval(ratio, (qb - root) / qa, (qb + root) / qa, n, method, True)


def two_level_bootstrap(sizes: Sequence[int], statistic: Callable[[list[tuple[int, np.ndarray]]], float],
                        n_boot: int = 2000, confidence: float = 0.95, seed: int = 0):
    """Percentile interval of a statistic under a two-level bootstrap: seeds are drawn with replacement, then,
    inside every drawn seed, its test cases with replacement.

    Args:
        sizes: test cases per seed (seed ``s`` has cases ``0 .. sizes[s] - 1``).
        statistic: called with one resample: a list of ``(seed index, case indices)``, one entry per drawn seed
            (a seed drawn twice appears twice, with its own case draw); returns a number, or a 1-D array of several
            statistics taken on the same draw (NaN is skipped, per statistic).
        n_boot: resamples (default 2000).
        confidence: coverage (default 0.95).
        seed: seeds the resampling.

    Returns:
        A number: (lo, hi, the finite resampled values). An array of k: (lo, hi) arrays of k, and the
        ``(n_boot, k)`` resampled values (NaN kept); a statistic with no finite value has NaN bounds.
    """
    rng = np.random.default_rng(seed)
    n_seeds = len(sizes)
    if n_seeds == 0:
        return float("nan"), float("nan"), np.empty(0)
    values = []
    for _ in range(n_boot):
        draw = [(int(s), rng.integers(0, sizes[s], sizes[s])) for s in rng.integers(0, n_seeds, n_seeds)]
        values.append(np.asarray(statistic(draw), float))
    values = np.asarray(values, float)
    tail = (1 - confidence) / 2
    if values.ndim == 1:
        values = values[np.isfinite(values)]
        if not len(values):
            return float("nan"), float("nan"), values
        return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail)), values
    lo, hi = np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    for k in range(values.shape[1]):
        column = values[:, k][np.isfinite(values[:, k])]
        if len(column):
            lo[k], hi[k] = np.quantile(column, tail), np.quantile(column, 1 - tail)
    return lo, hi, values


def difference_verdict(test: PairedTest) -> str:
    """The preregistered rule for "a beats b": ``"a > b"`` where the seed-level interval of ``a - b`` lies above 0,
    ``"a < b"`` where it lies below, ``"not shown"`` where it contains 0 or is undefined."""
    if not (np.isfinite(test.lo) and np.isfinite(test.hi)):
        return "not shown"
    if test.lo > 0:
        return "a > b"
    if test.hi < 0:
        return "a < b"
    return "not shown"


def ratio_verdict(interval: RatioInterval, threshold: float) -> str:
    """The preregistered rule for "a reaches ``threshold`` x b": ``"met"`` where the ratio interval's lower bound
    is at least ``threshold``, ``"missed"`` where its upper bound is below it, else ``"not shown"`` (also for an
    unbounded interval)."""
    if not interval.bounded:
        return "not shown"
    if interval.lo >= threshold:
        return "met"
    if interval.hi < threshold:
        return "missed"
    return "not shown"
