"""lib.core.sample_size.sufficient: K over orders with a conformal upper bound, the simultaneous band, the power-law
learning curve, the loss-gap scale and the calibration threshold, on synthetic cases with known answers."""
import math

import numpy as np
import pytest

from lib.core.checks import ParameterError
from lib.core.landscape.delta import loss_differences
from lib.core.sample_size import sufficient as ss
from lib.core.sample_size.decay import first_k_below, k_closed_form


def test_k_per_order_equals_an_explicit_loop():
    rng = np.random.default_rng(0)
    k = np.arange(1, 301, dtype=float)
    curves = rng.lognormal(size=(7, 300)) / k ** 2
    thresholds = [1e-2, 1e-3, 1e-4, 1e-6]
    got = ss.k_per_order(k, curves, thresholds)
    for r in range(7):
        for g, t in enumerate(thresholds):
            want = first_k_below(k, curves[r], t)
            assert (np.isnan(got[r, g]) and want is None) or got[r, g] == want


def _order_curves(losses, n_orders, rng):
    """Delta_k^pi at theta = 0 (one point): d_k^2 of each random order."""
    perms = np.stack([rng.permutation(len(losses)) for _ in range(n_orders)])
    return loss_differences(losses[perms]) ** 2


def test_conformal_upper_covers_held_out_orders():
    """Heavy-tailed per-sample losses: K(Delta) over 99 orders gives an upper bound that at least 95 % of new
    orders stay below (on average over 30 calibration sets; one set's coverage is Beta-distributed)."""
    rng = np.random.default_rng(1)
    losses = rng.pareto(2.5, size=600) + 0.1
    k = np.arange(1, 600, dtype=float)
    thr = [2e-4]
    held = ss.k_per_order(k, _order_curves(losses, 2000, rng), thr)[:, 0]
    held = np.where(np.isnan(held), np.inf, held)
    coverage, pointwise = [], []
    for _ in range(30):
        cal = ss.k_per_order(k, _order_curves(losses, 99, rng), thr)[:, 0]
        upper = ss.conformal_upper(cal, 0.95)
        coverage.append(np.mean(held <= upper))
        pointwise.append(np.mean(held <= np.nanquantile(cal, 0.5)))
    assert np.mean(coverage) >= 0.95 - 0.01, np.mean(coverage)
    assert np.mean(coverage) <= 0.99            # not vacuous
    assert np.mean(pointwise) < 0.6             # the median is no upper bound


def test_conformal_upper_rank_and_small_samples():
    assert ss.conformal_upper(np.arange(1, 20, dtype=float), 0.95) == 19.0       # ceil(20 * 0.95) = 19
    assert ss.conformal_upper(np.arange(1, 10, dtype=float), 0.95) == math.inf   # 9 values cannot give 95 %
    assert ss.conformal_upper([1.0, np.nan, 2.0] * 10, 0.5) == 2.0


def test_order_summary_quantiles_and_not_reached():
    s = ss.order_summary([10, 20, 30, 40, np.nan] * 20)
    assert (s.median, s.q05, s.q95, s.upper) == (30.0, 10.0, None, None)
    assert s.reached == pytest.approx(0.8) and s.n == 100


def test_simultaneous_band_covers_the_whole_curve():
    """i.i.d. Gaussian batch means around a known curve: the max-t band covers every k in ~95 % of repetitions,
    the pointwise +-2 SE band almost never does on 200 independent k."""
    rng = np.random.default_rng(2)
    M, B, truth = 200, 32, np.linspace(1, 2, 200)
    whole, pointwise = 0, 0
    reps = 150
    for r in range(reps):
        X = truth + rng.standard_normal((B, M)) * np.linspace(0.5, 1.5, M)
        m, se = X.mean(0), X.std(0, ddof=1) / math.sqrt(B)
        c = ss.simultaneous_multiplier(X, n_boot=1000, seed=r, method="max_t")
        assert 2.5 < c < 4.5
        whole += np.all(np.abs(m - truth) <= c * se)
        pointwise += np.all(np.abs(m - truth) <= 2 * se)
    assert whole / reps >= 0.88, whole / reps
    assert pointwise / reps < 0.1


def test_power_law_fit_recovers_known_parameters():
    rng = np.random.default_rng(3)
    sizes = np.repeat([250, 500, 1000, 2000, 4000, 8000], 3)
    errors = 4.0 * sizes ** -0.6 + 0.02 + rng.normal(0, 2e-4, len(sizes))
    law = ss.fit_power_law(sizes, errors)
    assert law.a == pytest.approx(4.0, rel=0.15) and law.b == pytest.approx(0.6, rel=0.05)
    assert law.c == pytest.approx(0.02, abs=2e-3) and law.n_points == 18 and law.n_max == 8000
    n1 = ss.n_within(law, 0.01)
    assert law(n1) == pytest.approx(law.c + 0.01, rel=1e-9)
    assert n1 == pytest.approx((4.0 / 0.01) ** (1 / 0.6), rel=0.25)
    with pytest.raises(ValueError, match="3 distinct sizes"):
        ss.fit_power_law([1, 1, 2], [0.1, 0.2, 0.3])


def test_observed_n_within():
    sizes = [100, 200, 400, 800, 1600]
    acc = [[0.80, 0.82], [0.90, 0.88], [0.93, 0.95], [0.96, 0.95], [0.955, 0.965]]
    assert ss.observed_n_within(sizes, acc, 0.01) == 800      # mean 0.955 >= 0.96 - 0.01 from 800 on
    assert ss.observed_n_within(sizes, acc, 0.04) == 400      # 0.94 >= 0.92
    assert ss.observed_n_within(sizes, np.mean(acc, 1), 0.01, plateau=0.99) is None
    assert ss.observed_n_within([100, 200, 300], [0.9, 0.6, 0.95], 0.05) == 300   # must hold for larger n too


def test_solve_increasing_and_bracketing():
    assert ss.solve_increasing(lambda s: s ** 2, 2.0, 0.1, 1.0) == pytest.approx(math.sqrt(2), rel=2e-3)
    with pytest.raises(ValueError, match="cannot bracket"):
        ss.solve_increasing(lambda s: 1.0, 2.0, 0.1, 1.0)


def test_delta_for_k_inverts_the_closed_form():
    for vbar, N, n in [(745.0, 10000, 1185), (1.5, 1000, 37), (3000.0, 60000, 45000)]:
        d = ss.delta_for_k(vbar, N, n)
        assert k_closed_form(vbar, N, d * (1 + 1e-9)) == n


def test_loss_gap_scale_solves_a_quadratic_rise_and_one_outside_its_first_bracket():
    # a quadratic rise sigma^2 S / 2 reaches the gap exactly at the guess sqrt(2 gap / S)
    S, gap = 7.0, 0.3
    sigma = ss.loss_gap_scale(lambda s: 0.5 * S * s * s, gap, S, rel_tol=1e-6)
    assert sigma == pytest.approx(math.sqrt(2 * gap / S), rel=1e-6)
    assert ss.quadratic_scale_guess(gap, S) == math.sqrt(2 * gap / S)
    # a quartic rise s^4 / 4 crosses 0.3 at (1.2)^(1/4), far from the quadratic guess with S = 1e-3
    sigma = ss.loss_gap_scale(lambda s: s ** 4 / 4, gap, 1e-3, rel_tol=1e-6)
    assert sigma == pytest.approx(1.2 ** 0.25, rel=1e-6)
    with pytest.raises(ParameterError, match="gap"):
        ss.loss_gap_scale(lambda s: s, 0.0, 1.0)
