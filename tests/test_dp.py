"""gliofed.dp: the Gaussian mechanism's noise scale, clipping, the accountant, DP-SGD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import gliofed.dp as dp
from gliofed.errors import ConfigError
from gliofed.model import MultiTaskUNet


@pytest.mark.parametrize(("epsilon", "delta"), [(0.5, 1e-5), (1.0, 1e-5), (4.0, 1e-6)])
def test_gaussian_sigma_meets_the_analytic_formula_exactly(epsilon, delta):
    """Balle & Wang (2018), Theorem 8, written out here with scipy's normal CDF: delta(sigma) equals the target."""
    sigma = dp.gaussian_sigma(epsilon, delta)
    a, b = 1 / (2 * sigma), epsilon * sigma
    exact = stats.norm.cdf(a - b) - math.exp(epsilon) * stats.norm.cdf(-a - b)
    assert exact == pytest.approx(delta, rel=1e-6)
    assert dp.gaussian_delta(sigma * 1.01, epsilon) < delta < dp.gaussian_delta(sigma * 0.99, epsilon)


def test_gaussian_sigma_scales_with_the_sensitivity():
    assert dp.gaussian_sigma(1.0, 1e-5, sensitivity=3.0) == pytest.approx(3 * dp.gaussian_sigma(1.0, 1e-5), rel=1e-9)


def test_analytic_sigma_is_below_the_classic_bound_and_near_it():
    for epsilon in (0.1, 0.5, 0.9):
        analytic, classic = dp.gaussian_sigma(epsilon, 1e-5), dp.classic_gaussian_sigma(epsilon, 1e-5)
        assert 0.6 * classic < analytic < classic
    assert dp.classic_gaussian_sigma(0.5, 1e-5) == pytest.approx(math.sqrt(2 * math.log(1.25e5)) / 0.5)


def test_the_prv_accountant_agrees_with_the_analytic_gaussian_mechanism():
    """Two independent computations: one release at the analytic sigma spends the target epsilon by the PRV
    accountant (numerically near-exact for a Gaussian)."""
    accountant = dp.Accountant("prv")
    accountant.step(dp.gaussian_sigma(1.0, 1e-5), 1.0, 1)
    assert accountant.epsilon(1e-5) == pytest.approx(1.0, abs=0.03)


def test_bad_budgets_are_refused_in_one_sentence():
    with pytest.raises(ConfigError, match="epsilon must be a positive"):
        dp.gaussian_sigma(0.0, 1e-5)
    with pytest.raises(ConfigError, match="delta must be in"):
        dp.gaussian_sigma(1.0, 1.5)
    with pytest.raises(ConfigError, match="epsilon < 1"):
        dp.classic_gaussian_sigma(2.0, 1e-5)


def test_clip_rows_bounds_every_norm_and_leaves_small_rows_alone():
    rows = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped = dp.clip_rows(rows, 1.0)
    assert np.allclose(np.linalg.norm(clipped, axis=1), [1.0, 0.5, 0.0])
    assert np.allclose(clipped[0], [0.6, 0.8]) and np.allclose(clipped[1], rows[1])


def test_gaussian_sum_adds_noise_of_the_stated_scale_to_the_clipped_sum():
    rows = np.full((5, 20_000), 10.0)  # each row clipped to norm 2: 2 / sqrt(20000) per coordinate
    noised = dp.gaussian_sum(rows, 2.0, 0.5, np.random.default_rng(0))
    residual = noised - 5 * 2.0 / math.sqrt(20_000)
    assert residual.std() == pytest.approx(1.0, rel=0.03) and abs(residual.mean()) < 0.03


def test_accountant_reproduces_a_known_configuration():
    """Opacus's published regression value: sigma 1.5, sample rate 0.04, 90 epochs (2,250 steps), delta 1e-5."""
    accountant = dp.Accountant()
    for _ in range(3):
        accountant.step(1.5, 0.04, 750)
    assert accountant.history == [(1.5, 0.04, 2250)]
    assert accountant.epsilon(1e-5) == pytest.approx(7.32911117143, rel=1e-6)


def test_accountant_composes_releases_as_the_closed_form_renyi_bound():
    """T Gaussian releases at sample rate 1 have RDP T * alpha / (2 z^2) exactly; converted to (epsilon, delta) by
    Balle et al. (2020, Theorem 21) at the accountant's orders, written out here."""
    from opacus.accountants.rdp import RDPAccountant

    z, releases, delta = 3.0, 7, 1e-5
    accountant = dp.Accountant()
    accountant.step(z, 1.0, 3)
    accountant.step(z, 1.0, 4)
    orders = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = releases * orders / (2 * z**2)
    eps = rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    assert accountant.epsilon(delta) == pytest.approx(float(eps.min()), rel=1e-6)
    assert dp.Accountant.from_dict(accountant.to_dict()).epsilon(delta) == accountant.epsilon(delta)


def test_noise_multiplier_for_spends_at_most_the_target():
    z = dp.noise_multiplier_for(2.0, 1e-5, sample_rate=0.25, steps=40)
    accountant = dp.Accountant()
    accountant.step(z, 0.25, 40)
    assert 1.95 <= accountant.epsilon(1e-5) <= 2.0


def test_batchnorm_models_are_refused_and_groupnorm_ones_accepted():
    with pytest.raises(ConfigError, match="norm='group'"):
        dp.check_no_batchnorm(MultiTaskUNet(features=(4, 8, 16, 32), hidden=8))
    dp.check_no_batchnorm(MultiTaskUNet(features=(4, 8, 16, 32), hidden=8, norm="group"))


def _tiny_regression(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    x, y = torch.randn(8, 5), torch.randn(8)
    return net, x, y


def test_dpsgd_without_clipping_or_noise_is_plain_minibatch_sgd():
    net, x, y = _tiny_regression()
    twin, _, _ = _tiny_regression()
    private = dp.DPSGD(net, torch.optim.SGD(net.parameters(), lr=0.1), 8, 8, noise_multiplier=1e-12,
                    max_grad_norm=1e3)
    private.step([lambda i=i: (net(x[i:i + 1])[0, 0] - y[i]) ** 2 for i in range(8)])
    plain = torch.optim.SGD(twin.parameters(), lr=0.1)
    ((twin(x)[:, 0] - y) ** 2).mean().backward()
    plain.step()
    for p, q in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


def test_dpsgd_clips_each_case_and_accounts_every_step_even_an_empty_one():
    net, x, y = _tiny_regression()
    before = [p.detach().clone() for p in net.parameters()]
    private = dp.DPSGD(net, torch.optim.SGD(net.parameters(), lr=1.0), 8, 4, noise_multiplier=1e-9,
                    max_grad_norm=0.01)
    private.step([lambda i=i: 1e3 * (net(x[i:i + 1])[0, 0] - y[i]) ** 2 for i in range(4)])
    moved = math.sqrt(sum(float(((p.detach() - b) ** 2).sum()) for p, b in zip(net.parameters(), before)))
    assert moved <= 0.01 + 1e-6  # 4 cases clipped to 0.01 each, averaged over the expected 4: at most 0.01
    private.step([])  # nobody sampled: the step is noise only, and it is accounted
    assert private.accountant.history == [(1e-9, 0.5, 2)] and private.steps_per_epoch == 2


def test_gaussian_release_unweights_the_sums_and_one_record_moves_it_by_at_most_the_clip():
    rng = np.random.default_rng(0)
    pieces = {"count": np.ones((6, 2)), "feature": rng.normal(0, 5, (6, 3, 4))}
    weights = {"count": 0.5, "feature": 0.05}
    quiet = dp.gaussian_release(pieces, 1e3, 1e-12, np.random.default_rng(1), weights)
    assert quiet["feature"].shape == (3, 4) and np.allclose(quiet["count"], [6, 6])
    assert np.allclose(quiet["feature"], pieces["feature"].sum(0))
    with_all = dp.gaussian_release(pieces, 1.0, 1e-12, np.random.default_rng(1), weights)
    without_last = dp.gaussian_release({k: v[:-1] for k, v in pieces.items()}, 1.0, 1e-12,
                                       np.random.default_rng(1), weights)
    moved = np.sqrt(sum(((weights[k] * (with_all[k] - without_last[k])) ** 2).sum() for k in pieces))
    assert moved <= 1.0 + 1e-9
    with pytest.raises(ConfigError, match="one row per record"):
        dp.gaussian_release({"a": np.ones((3, 2)), "b": np.ones((4, 2))}, 1.0, 1.0, rng)
