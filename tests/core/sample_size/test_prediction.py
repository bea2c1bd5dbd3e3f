"""Targets, power laws, calibrations and scores of the prediction benchmark (``lib.core.sample_size.prediction``),
on constructed curves whose answers are known."""
import math

import numpy as np
import pytest

from lib.core.checks import ParameterError
from lib.core.sample_size.prediction import (
    apply_calibration,
    bootstrap_power_law,
    calibrated,
    delta_for_target,
    fit_calibration,
    fit_power_law,
    k_closed,
    power_law_n,
    score,
    size_grid,
    snap,
    target,
)


def test_size_grid_ratio_and_ends():
    g = size_grid(60_000, 48, 1.25)
    assert g[-1] == 60_000 and g[0] >= 48 and g[0] < 48 * 1.25
    assert np.all(g[1:] / g[:-1] <= 1.25 + 1e-2) and np.all(np.diff(g) > 0)
    assert snap(1000.2, g) == g[np.searchsorted(g, 1000.2)] and snap(10, g) == g[0] and snap(1e9, g) == 60_000
    assert snap(None, g) is None


def _curve(sizes, plateau, a, b, seeds=3, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    mean = plateau - a * np.asarray(sizes, float) ** (-b)
    return mean[:, None] + noise * rng.standard_normal((len(sizes), seeds))


def test_target_is_the_first_size_that_stays_within_eps():
    sizes = size_grid(40_000, 50, 1.25)
    acc = _curve(sizes, 0.95, 2.0, 0.5)            # acc(n_max) - acc(n) = 2 (n^-0.5 - n_max^-0.5)
    t = target(sizes, acc, 0.02)
    exact = (0.02 / 2 + 40_000 ** -0.5) ** -2      # where the gap to acc(n_max) equals eps: 4,444
    assert t.status == "resolved" and t.n == snap(exact, sizes)
    assert t.low == t.high == t.n                  # identical seeds: the bootstrap cannot move it
    assert target(sizes, acc, 0.005).status == "unresolved"          # 17,778 > n_max / 4
    assert target(sizes, acc, 0.5).status == "left-censored"         # within eps at the smallest size
    noisy = target(sizes, _curve(sizes, 0.95, 2.0, 0.5, seeds=5, noise=0.003), 0.02)
    assert noisy.low <= noisy.high
    with pytest.raises(ParameterError, match="accuracy"):
        target(sizes, acc[:, :1], 0.02)


def test_power_law_recovers_its_parameters_and_solves_its_equation():
    n = np.array([50, 75, 110, 170, 250, 380, 560, 750], float)
    err = 3.0 * n ** -0.6 + 0.04
    law = fit_power_law(n, err, np.full(len(n), 1e-3))
    assert law.a == pytest.approx(3.0, rel=1e-3) and law.b == pytest.approx(0.6, rel=1e-3)
    assert law.c == pytest.approx(0.04, abs=1e-4)
    m = power_law_n(law, 0.01, 60_000)
    assert law(m) == pytest.approx(law(60_000) + 0.01, rel=1e-9)
    boot = bootstrap_power_law(n, err, np.full(len(n), 2e-3), [0.01], 60_000, n_boot=50)
    point, lo, hi = boot["predictions"][0.01]
    assert lo <= point <= hi and point == pytest.approx(m, rel=1e-3)
    assert fit_power_law(n[:2], err[:2]) is None and power_law_n(None, 0.01, 100) is None


def test_closed_form_k_inverts_the_threshold():
    for vbar, N, n in ((0.3, 750, 1234.0), (80.0, 1500, 17.0)):
        assert k_closed(vbar, N, delta_for_target(vbar, N, n)) == pytest.approx(n, rel=1e-9)


def test_calibration_is_exact_on_linear_data_and_never_uses_the_own_family():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = 1.5 + 0.7 * x
    cal = fit_calibration(y, x[:, None])
    assert cal["coef"] == pytest.approx([1.5, 0.7]) and abs(cal["residual_low"]) < 1e-9
    assert apply_calibration(cal, [2.0])[0] == pytest.approx(2.9)
    fam = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 4)
    y_out = y.copy()
    y_out[:4] += 5.0                                 # family a is far off: its own predictions must not see it
    for i, r in enumerate(calibrated(y_out, x[:, None], fam)):
        if fam[i] == "a":
            assert math.log(r[0]) == pytest.approx(y[i], abs=1e-9)
    const = calibrated(np.log([100, 200, 400, 800, 1600, 3200]), np.empty((6, 0)), ["a", "a", "b", "b", "c", "c"])
    assert const[0][0] == pytest.approx(math.exp(np.mean(np.log([400, 800, 1600, 3200]))))
    assert fit_calibration(y[:2], x[:2, None]) is None


def test_score_by_hand():
    s = score([200, 100, 800, 400], [100, 50, None, 500], [400, 200, None, 600], [100, 100, 100, 100],
              {"other": [2.0, 2.0, 2.0, 2.0]})
    assert s["median_abs_log2"] == pytest.approx(1.5) and s["within_2x"] == 0.5
    assert s["coverage"] == 0.5                      # [100, 400] and [50, 200] hold 100; [500, 600] and none not
    assert s["p90_abs_log2"] == pytest.approx(np.quantile([1, 0, 3, 2], 0.9))
    assert 0 < s["wilcoxon_p"]["other"] < 1
