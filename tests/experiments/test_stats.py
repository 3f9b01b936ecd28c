"""gliofed.experiments.stats: known inputs give known intervals, tests and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gliofed.experiments import stats

T4 = 2.7764451051977934  # Student t, 97.5 % quantile, 4 degrees of freedom (tables: 2.776)
T2 = 4.302652729749462  # 2 degrees of freedom (tables: 4.303)


def test_t_interval_of_one_to_five_is_three_plus_minus_t4_times_its_standard_error():
    interval = stats.t_interval([1, 2, 3, 4, 5])
    half = T4 * math.sqrt(2.5) / math.sqrt(5)  # sd of 1..5 = sqrt(2.5)
    assert interval.mean == pytest.approx(3.0) and interval.n == 5
    assert interval.lo == pytest.approx(3 - half) and interval.hi == pytest.approx(3 + half)
    assert interval.lo == pytest.approx(1.0367568, abs=1e-6)


def test_t_interval_leaves_out_non_finite_values_and_has_no_bounds_for_one_seed():
    assert stats.t_interval([0.6, float("nan"), 0.7, 0.8]).lo == pytest.approx(0.7 - T2 * 0.1 / math.sqrt(3))
    single = stats.t_interval([0.5])
    assert single.mean == 0.5 and math.isnan(single.lo) and math.isnan(single.hi) and single.n == 1


def test_paired_test_of_known_differences_gives_the_textbook_interval_t_and_p():
    result = stats.paired_test([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])  # differences 1..5
    assert result.diff == pytest.approx(3.0) and result.n == 5
    assert (result.lo, result.hi) == pytest.approx((1.0367568, 4.9632432), abs=1e-6)
    assert result.t == pytest.approx(3 / math.sqrt(0.5)) and result.p == pytest.approx(0.0132356, abs=1e-6)


def test_paired_test_drops_a_seed_where_either_strategy_has_no_score():
    result = stats.paired_test([2, 4, float("nan"), 6, 8, 10], [1, 2, 0.5, 3, 4, 5])
    assert result.n == 5 and result.diff == pytest.approx(3.0)


def test_paired_test_with_identical_differences_is_a_point_not_nan():
    shifted = stats.paired_test([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    assert (shifted.lo, shifted.hi, shifted.p) == pytest.approx((0.1, 0.1, 0.0))
    same = stats.paired_test([0.6, 0.7], [0.6, 0.7])
    assert same.diff == 0 and same.p == 1.0


def test_fieller_with_a_constant_denominator_is_the_t_interval_of_the_numerator_over_it():
    result = stats.ratio_interval([1, 2, 3, 4, 5], [2, 2, 2, 2, 2])
    assert result.bounded and result.method == "fieller" and result.ratio == pytest.approx(1.5)
    assert (result.lo, result.hi) == pytest.approx((1.0367568 / 2, 4.9632432 / 2), abs=1e-6)


def test_fieller_bounds_are_where_the_paired_t_test_of_a_minus_rho_b_reaches_the_critical_value():
    a = np.array([0.66, 0.71, 0.64, 0.69, 0.61, 0.70])
    b = np.array([0.70, 0.78, 0.54, 0.62, 0.81, 0.66])
    result = stats.ratio_interval(a, b)
    t_crit = stats._t_quantile(0.95, len(a) - 1)
    for rho in (result.lo, result.hi):
        d = a - rho * b
        assert abs(d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))) == pytest.approx(t_crit, rel=1e-9)
    assert result.lo < a.mean() / b.mean() < result.hi


def test_fieller_is_unbounded_when_the_denominator_is_not_clearly_away_from_zero():
    result = stats.ratio_interval([1.0, 1.1, 0.9, 1.0], [0.5, -0.4, 0.6, -0.5])
    assert not result.bounded and math.isnan(result.lo) and math.isnan(result.hi)
    assert stats.ratio_verdict(result, 0.95) == "not shown"


def test_log_ratio_interval_is_the_exponentiated_t_interval_of_the_log_ratios():
    b = np.array([0.5, 0.6, 0.7])
    a = b * np.exp([0.0, 0.1, 0.2])
    result = stats.ratio_interval(a, b, method="log")
    assert result.ratio == pytest.approx(math.exp(0.1))
    assert (result.lo, result.hi) == pytest.approx((math.exp(0.1 - T2 * 0.1 / math.sqrt(3)),
                                                    math.exp(0.1 + T2 * 0.1 / math.sqrt(3))))
    with pytest.raises(ValueError, match="positive"):
        stats.ratio_interval([0.5, -0.1], [0.5, 0.5], method="log")
    with pytest.raises(ValueError, match="unknown ratio method"):
        stats.ratio_interval([1, 2], [1, 2], method="delta")


def test_two_level_bootstrap_over_two_constant_seeds_draws_seed_means_in_binomial_proportions():
    values = [np.zeros(5), np.ones(7)]  # every case of seed 0 scores 0, of seed 1 scores 1

    def statistic(draw):
        return float(np.mean([values[s][rows].mean() for s, rows in draw]))

    lo, hi, draws = stats.two_level_bootstrap([5, 7], statistic, n_boot=4000, seed=1)
    shares = [np.mean(draws == v) for v in (0.0, 0.5, 1.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03) and (lo, hi) == (0.0, 1.0)


def test_two_level_bootstrap_resamples_cases_inside_a_seed():
    cases = np.arange(10.0)
    lo, hi, draws = stats.two_level_bootstrap([10], lambda draw: cases[draw[0][1]].mean(), n_boot=2000, seed=0)
    assert draws.std() == pytest.approx(cases.std() / math.sqrt(10), rel=0.1)  # the ordinary bootstrap's spread
    assert lo < 4.5 < hi


def test_two_level_bootstrap_of_several_statistics_takes_each_from_the_same_draws():
    cases = np.arange(10.0)
    lo, hi, draws = stats.two_level_bootstrap(
        [10], lambda draw: np.array([cases[draw[0][1]].mean(), -cases[draw[0][1]].mean(), np.nan]), n_boot=500, seed=3)
    one_lo, one_hi, one = stats.two_level_bootstrap([10], lambda draw: cases[draw[0][1]].mean(), n_boot=500, seed=3)
    assert draws.shape == (500, 3) and np.array_equal(draws[:, 0], one) and np.array_equal(draws[:, 1], -one)
    assert (lo[0], hi[0]) == (one_lo, one_hi) and (lo[1], hi[1]) == pytest.approx((-one_hi, -one_lo))
    assert np.isnan(lo[2]) and np.isnan(hi[2])  # a statistic never finite has no interval


def test_verdicts_follow_the_preregistered_rules():
    assert stats.difference_verdict(stats.PairedTest(0.05, 0.01, 0.09, 3.0, 0.01, 10)) == "a > b"
    assert stats.difference_verdict(stats.PairedTest(-0.05, -0.09, -0.01, -3.0, 0.01, 10)) == "a < b"
    assert stats.difference_verdict(stats.PairedTest(0.05, -0.01, 0.11, 1.5, 0.2, 10)) == "not shown"
    ratio = stats.RatioInterval(1.0, 0.96, 1.04, 10, "fieller", True)
    assert stats.ratio_verdict(ratio, 0.95) == "met" and stats.ratio_verdict(ratio, 0.97) == "not shown"
    assert stats.ratio_verdict(ratio, 1.05) == "missed"
