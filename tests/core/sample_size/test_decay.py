"""Convergence analysis on synthetic curves with known answers; Kiselev & Grabovoy's bound
(lib.core.landscape.bounds)."""
import math

import numpy as np
import pytest
import torch

from lib.core.landscape import bounds
from lib.core.landscape.delta import loss_differences, loss_variance
from lib.core.sample_size import decay as cv
from tests.cases import explicit_hessian, seeded_model

K = np.arange(1, 2001, dtype=float)


def test_slope_recovers_known_exponent():
    for alpha in (1.0, 2.0, 2.5):
        fit = cv.fit_slope(K, 3.0 * K ** -alpha)
        assert fit.slope == pytest.approx(-alpha, abs=1e-10)
        assert fit.prefactor == pytest.approx(3.0, rel=1e-9)
        assert fit.r2 == pytest.approx(1.0)


def test_slope_with_noise_has_honest_error():
    rng = np.random.default_rng(0)
    fits = [cv.fit_slope(K, K ** -2.0 * np.exp(0.3 * rng.standard_normal(len(K))), n_bins=None) for _ in range(50)]
    slopes = np.array([f.slope for f in fits])
    assert abs(slopes.mean() + 2.0) < 3 * slopes.std() / math.sqrt(50) + 1e-3
    typical_se = np.median([f.slope_stderr for f in fits])
    assert 0.5 < slopes.std() / typical_se < 2.0


def test_k_of_monotone_curve():
    delta = 1.0 / K ** 2
    ss = cv.sufficient_sample_size(K, delta, threshold=1e-4)
    assert ss.K == 101          # 1/100^2 = 1e-4 is not < 1e-4; 1/101^2 is
    assert ss.reached


def test_k_of_curve_reaching_then_rising_again():
    delta = 1.0 / K ** 2
    delta[1499] = 1.0           # a late outlier at k = 1500
    assert cv.sufficient_sample_size(K, delta, 1e-4).K == 1501


def test_k_never_reached_and_all_below():
    assert cv.sufficient_sample_size(K, np.full_like(K, 0.5), 0.1).K is None
    assert not cv.sufficient_sample_size(K, np.full_like(K, 0.5), 0.1).reached
    assert cv.sufficient_sample_size(K, np.full_like(K, 0.01), 0.1).K == 1


def test_conservative_k_is_later_and_uses_two_standard_errors():
    rng = np.random.default_rng(1)
    delta = (1.0 / K ** 2) * (1 + 0.1 * rng.standard_normal(len(K)))
    se = 0.1 / K ** 2
    ss = cv.sufficient_sample_size(K, delta, 1e-4, stderr=se)
    assert ss.K_conservative >= ss.K
    brute = next(k for k in K.astype(int) if np.all(delta[k - 1:] + 2 * se[k - 1:] < 1e-4))
    assert ss.K_conservative == brute


def test_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        cv.sufficient_sample_size(K, 1 / K, 0.0)


@pytest.mark.parametrize("vbar, N, thr", [(0.76, 10000, 1e-4), (40.0, 10000, 1e-6), (0.02, 500, 1e-3)])
def test_closed_form_k_matches_brute_force(vbar, N, thr):
    k = cv.k_closed_form(vbar, N, thr)
    curve = lambda kk: vbar * N / ((N - 1) * kk * (kk + 1))  # noqa: E731
    assert curve(k) < thr and (k == 1 or curve(k - 1) >= thr)


def test_pilot_prediction_exact_on_power_law():
    c, alpha = 5.0, 1.8
    delta = c * K ** -alpha
    pilot = cv.pilot_prediction(K, delta, k0=200, threshold=1e-5)
    assert pilot.K == pytest.approx((c / 1e-5) ** (1 / alpha), rel=1e-9)
    full = cv.sufficient_sample_size(K, delta, 1e-5).K
    assert full == math.floor(pilot.K) + 1


def test_spearman_known_values():
    assert cv.spearman([1, 2, 3, 4], [10, 20, 30, 45])["rho"] == pytest.approx(1.0)
    assert cv.spearman([1, 2, 3, 4], [4, 3, 2, 1])["rho"] == pytest.approx(-1.0)


def test_r0_curve_matches_direct_computation():
    rng = np.random.default_rng(0)
    losses = rng.exponential(size=30)
    out = cv.r0_curve(losses, n_orders=4, seed=7)
    gen = torch.Generator().manual_seed(7)
    direct = []
    for _ in range(4):
        perm = losses[torch.randperm(30, generator=gen).numpy()]
        direct.append([abs(perm[:k + 1].mean() - perm[:k].mean()) for k in range(1, 30)])
    direct = np.array(direct)
    assert np.allclose(out["mean"], direct.mean(0), rtol=1e-12)
    assert np.allclose(out["stderr"], direct.std(0, ddof=1) / 2, rtol=1e-9)


# ------------------------------------------------------------------------------- lib.core.landscape.bounds
def test_hessian_norm_bound_by_hand():
    # L = 2, M_W = 2, M_x = 3: 2*sqrt2*9*16 + sqrt2*4*(16-1)/(4-1) = 288 sqrt2 + 20 sqrt2
    assert bounds.hessian_norm_bound(2, 2.0, 3.0) == pytest.approx(308 * math.sqrt(2))
    # M_W = 1: the geometric sum is L
    assert bounds.hessian_norm_bound(3, 1.0, 1.0) == pytest.approx(3 * math.sqrt(2) + 3 * math.sqrt(2))
    assert bounds.loss_difference_bound(np.array([1, 3]), 2.0, 10.0, R=0.5).tolist() == pytest.approx([4.5, 2.25])
    with pytest.raises(ValueError, match=r"n_layers=0 is not allowed: an integer in \[1, inf\]"):
        bounds.hessian_norm_bound(0, 2.0, 3.0)
    with pytest.raises(ValueError, match=r"M_W=0.0 is not allowed: a finite number in \(0.0, inf\]"):
        bounds.hessian_norm_bound(2, 0.0, 3.0)
    with pytest.raises(ValueError, match=r"M_x=nan is not allowed"):
        bounds.hessian_norm_bound(2, 2.0, float("nan"))


def test_bound_constants_and_measured_norms_below_bound():
    net = seeded_model(lambda: torch.nn.Sequential(torch.nn.Linear(4, 5, bias=False), torch.nn.ReLU(),
                                                   torch.nn.Linear(5, 3, bias=False)), 0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    consts = bounds.bound_constants(net, x)
    assert consts["n_layers"] == 2
    assert consts["M_x"] == pytest.approx(float(x.norm(dim=1).max()))
    assert consts["M_W"] == pytest.approx(max(float(torch.linalg.matrix_norm(m.weight.detach(), ord=2))
                                              for m in (net[0], net[2])), rel=1e-12)
    norms = bounds.per_sample_hessian_norms(net, x, y, indices=[0, 3])
    assert norms.shape == (2,)
    for i, got in zip([0, 3], norms):
        H = explicit_hessian(net, x[i:i + 1], y[i:i + 1])          # explicit per-sample Hessian
        assert got == pytest.approx(float(torch.linalg.matrix_norm(H, ord=2)), rel=1e-5)
        assert got <= bounds.hessian_norm_bound(**consts)
    with pytest.raises(ValueError, match="bias-free"):
        bounds.bound_constants(torch.nn.Sequential(torch.nn.Linear(4, 3)), x)


def test_bounds_left_convergence():
    for name in ("hessian_norm_bound", "loss_difference_bound", "bound_constants", "per_sample_hessian_norms"):
        assert not hasattr(cv, name), name


def test_weighted_increment_identity_holds_for_every_order_on_heavy_tailed_data():
    """sum_k k(k+1) (L_{k+1} - L_k)^2 = N V exactly, whatever the order (Welford's telescoping sum)."""
    rng = np.random.default_rng(0)
    losses = rng.pareto(1.5, size=5000) * 10          # heavy tail: a few enormous values
    for _ in range(5):
        lhs, rhs = cv.weighted_increment_sum(rng.permutation(losses))
        assert lhs == pytest.approx(rhs, rel=1e-10)
    lhs, rhs = cv.weighted_increment_sum([1.0, 3.0])
    assert lhs == pytest.approx(2.0) and rhs == pytest.approx(2.0)   # k=1: 1*2*(2-1)^2 = 2 = 2 * var([1, 3])


def test_k_average_of_k2_delta_equals_vbar_for_a_fixed_order():
    """E_theta of the identity: mean_k k(k+1) Delta_k = V-bar N / (N-1) for one fixed order (many thetas)."""
    rng = np.random.default_rng(1)
    L = rng.lognormal(size=(200, 300))                  # 200 "thetas" x 300 per-sample losses, one order
    d = loss_differences(L)
    k = np.arange(1, 300)
    delta = (d ** 2).mean(0)
    vbar = loss_variance(L).mean()
    assert np.mean(k * (k + 1) * delta) == pytest.approx(vbar * 300 / 299, rel=1e-10)
