"""Sampling distributions: moments (docs/specification.md section 3) for each estimator, structure, seeding, errors."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from lib.core.landscape.sampling import (
    ESTIMATORS,
    Ball,
    Curvature,
    Gaussian,
    Sphere,
    estimator_units,
    make_sampler,
    quadrature,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

SIGMA = 0.7


def closed_form_m(name, sigma, D):
    """Fourth moment m of docs/specification.md section 3, written out independently of lib.core.landscape.sampling."""
    return {"gaussian": sigma ** 4, "ball": sigma ** 4 * (D + 2) / (D + 4),
            "sphere": sigma ** 4 * D / (D + 2)}[name]


def unit_stats(values, unit):
    """Mean and standard error of per-row values over i.i.d. units of `unit` consecutive rows."""
    v = values.reshape(-1, unit).mean(axis=1)
    return v.mean(), v.std(ddof=1) / math.sqrt(len(v))


@pytest.mark.parametrize("name", ["gaussian", "ball", "sphere"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_isotropic_moments_match_section3(name, estimator):
    D, n = 3, 2 ** 14
    sampler = make_sampler(name, sigma=SIGMA)
    th = sampler.sample(n, D, estimator=estimator, seed=3).numpy()
    assert th.shape == (n, D) and th.dtype == np.float64
    unit = estimator_units(n, estimator)
    if estimator == "sobol":
        unit = 1  # rows of a scrambled Sobol block are not independent, but i.i.d. SEs are conservative for QMC
    s, m = SIGMA ** 2, closed_form_m(name, SIGMA, D)
    assert sampler.s(D) == pytest.approx(s, rel=1e-15)
    assert sampler.m(D) == pytest.approx(m, rel=1e-15)
    checks = [
        (th[:, 0] ** 2, s), (th[:, 1] ** 2, s), (th[:, 2] ** 2, s),
        (th[:, 0] ** 4, 3 * m), (th[:, 1] ** 4, 3 * m),
        (th[:, 0] ** 2 * th[:, 1] ** 2, m), (th[:, 1] ** 2 * th[:, 2] ** 2, m),
        (th[:, 0] * th[:, 1], 0.0), (th[:, 0] ** 3 * th[:, 2], 0.0),
    ]
    for vals, expected in checks:
        mean, se = unit_stats(vals, unit)
        assert abs(mean - expected) < 5 * se + 1e-12, (name, estimator, mean, expected, se)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_curvature_moments(estimator):
    lam = np.array([4.0, 1.0, 0.25])
    eps, D, n = 0.3, 3, 2 ** 14
    sampler = Curvature(eps, lam)
    expected_var = 2 * eps / (D * lam)
    np.testing.assert_allclose(sampler.s(D), expected_var, rtol=1e-15)
    np.testing.assert_allclose(sampler.covariance(D), np.diag(expected_var), rtol=1e-15)
    th = sampler.sample(n, D, estimator=estimator, seed=5).numpy()
    unit = 1 if estimator == "sobol" else estimator_units(n, estimator)
    for d in range(D):
        mean, se = unit_stats(th[:, d] ** 2, unit)
        assert abs(mean - expected_var[d]) < 5 * se
        mean, se = unit_stats(th[:, d] ** 4, unit)
        assert abs(mean - 3 * expected_var[d] ** 2) < 5 * se
    mean, se = unit_stats(th[:, 0] * th[:, 1], unit)
    assert abs(mean) < 5 * se
    # equal expected quadratic loss rise per direction: lambda_d s_d / 2 = eps / D
    np.testing.assert_allclose(lam * sampler.s(D) / 2, eps / D, rtol=1e-14)


def test_ball_and_sphere_geometry():
    D, n = 4, 4000
    sph = Sphere(SIGMA).sample(n, D, seed=1)
    np.testing.assert_allclose(sph.norm(dim=1).numpy(), SIGMA * math.sqrt(D), rtol=1e-12)
    for est in ("plain", "sobol"):
        ball = Ball(SIGMA).sample(n, D, estimator=est, seed=2)
        r = ball.norm(dim=1).numpy() / (SIGMA * math.sqrt(D + 2))
        assert r.max() <= 1 + 1e-12
        # P(|theta| <= R t) = t^D for the uniform ball
        assert stats.kstest(r ** D, "uniform").pvalue > 1e-3
        # directions uniform: mean direction near 0
        u = ball / ball.norm(dim=1, keepdim=True)
        assert u.mean(0).abs().max() < 5 / math.sqrt(n)


def test_quadrature_rules_reproduce_closed_form_moments():
    """The quadrature rules used as brute force elsewhere integrate the section-3 moments exactly."""
    for name in ("gaussian", "ball", "sphere"):
        for D in (1, 2, 3):
            sampler = make_sampler(name, sigma=SIGMA)
            X, W = quadrature(sampler, D)
            assert W.sum().item() == pytest.approx(1.0, abs=1e-14)
            m = closed_form_m(name, SIGMA, D)
            assert (W * X[:, 0] ** 2).sum().item() == pytest.approx(SIGMA ** 2, rel=1e-12)
            assert (W * X[:, 0] ** 4).sum().item() == pytest.approx(3 * m, rel=1e-12)
            assert abs((W * X[:, 0] ** 3).sum().item()) < 1e-14
            if D > 1:
                assert (W * X[:, 0] ** 2 * X[:, -1] ** 2).sum().item() == pytest.approx(m, rel=1e-12)
                assert abs((W * X[:, 0] * X[:, -1]).sum().item()) < 1e-14
            np.testing.assert_allclose(sampler.fourth_moment_tensor(D),
                                       torch.einsum("q,qa,qb,qc,qd->abcd", W, X, X, X, X).numpy(),
                                       atol=1e-13)


def test_antithetic_pairs_and_sobol_blocks():
    g = Gaussian(1.0)
    th = g.sample(10, 3, estimator="antithetic", seed=0)
    torch.testing.assert_close(th[1::2], -th[0::2], rtol=0, atol=0)
    assert estimator_units(10, "antithetic") == 2
    q = g.sample(64, 2, estimator="sobol", seed=0, n_replicates=4)
    assert estimator_units(64, "sobol", 4) == 16
    blocks = q.reshape(4, 16, 2)
    assert not torch.allclose(blocks[0], blocks[1])            # independent scramblings
    torch.testing.assert_close(q, g.sample(64, 2, estimator="sobol", seed=0, n_replicates=4))
    assert not torch.allclose(q, g.sample(64, 2, estimator="sobol", seed=1, n_replicates=4))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_seeding_is_reproducible(estimator):
    for s in (Gaussian(0.5), Ball(0.5), Sphere(0.5), Curvature(0.1, [1.0, 2.0])):
        a = s.sample(16, 2, estimator=estimator, seed=11)
        b = s.sample(16, 2, estimator=estimator, seed=11)
        c = s.sample(16, 2, estimator=estimator, seed=12)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.allclose(a, c)


def test_sobol_has_lower_error_than_plain_for_a_smooth_mean():
    """Independent scramblings: the spread of block means is far below plain MC at equal n."""
    g = Gaussian(1.0)
    f = lambda t: (t[:, 0] + 0.5 * t[:, 1] ** 2).numpy()  # noqa: E731  E f = 0.5
    plain = np.array([f(g.sample(256, 2, seed=s)).mean() for s in range(8)])
    sob = f(g.sample(8 * 256, 2, estimator="sobol", seed=0)).reshape(8, 256).mean(1)
    assert abs(sob.mean() - 0.5) < 5 * sob.std(ddof=1) / math.sqrt(8) + 1e-12
    assert sob.std() < 0.3 * plain.std()


def test_bad_parameters_raise_value_errors():
    for bad in (0, -1.0, float("nan"), float("inf"), "x", True):
        with pytest.raises(ValueError, match=rf"^sigma={bad!r} is not allowed: a finite number in \(0.0, inf\]"):
            Gaussian(bad)
    with pytest.raises(ValueError, match="read as the text '0.1'"):
        Sphere("0.1")
    with pytest.raises(ValueError, match="sigma=0 is not allowed"):
        make_sampler("ball", sigma=0)
    with pytest.raises(ValueError, match="eps=0.0 is not allowed"):
        Curvature(0.0, [1.0])
    with pytest.raises(ValueError, match=r"distribution='uniform' is not allowed: one of \['gaussian', 'ball'"):
        make_sampler("uniform", sigma=1.0)
    with pytest.raises(ValueError, match="takes sigma"):
        make_sampler("gaussian", eps=1.0)
    with pytest.raises(ValueError, match=r"eigenvalue > 0.*eigenvalues\[1\]"):
        Curvature(0.1, [1.0, -0.5, 2.0])
    with pytest.raises(ValueError, match=r"eigenvalue > 0.*eigenvalues\[0\]"):
        make_sampler("curvature", eps=0.1, eigenvalues=[0.0])
    with pytest.raises(ValueError, match="D=3 does not match.*2 eigenvalues"):
        Curvature(0.1, [1.0, 2.0]).sample(4, 3)
    with pytest.raises(ValueError, match="not isotropic"):
        Curvature(0.1, [1.0, 2.0]).m(2)
    g = Gaussian(1.0)
    with pytest.raises(ValueError, match=r"estimator='qmc' is not allowed: one of \['plain', 'antithetic', 'sobol'\]"):
        g.sample(4, 2, estimator="qmc")
    with pytest.raises(ValueError, match="estimator='qmc' is not allowed"):
        estimator_units(4, "qmc")
    with pytest.raises(ValueError, match="antithetic.*even n"):
        g.sample(5, 2, estimator="antithetic")
    with pytest.raises(ValueError, match="multiple of n_replicates=8"):
        g.sample(12, 2, estimator="sobol")
    with pytest.raises(ValueError, match=r"n_replicates=1 is not allowed: an integer in \[2, inf\]"):
        g.sample(12, 2, estimator="sobol", n_replicates=1)
    with pytest.raises(ValueError, match=r"n=0 is not allowed: an integer in \[1, inf\]"):
        g.sample(0, 2)
    with pytest.raises(ValueError, match=r"n=4.0 is not allowed"):
        g.sample(4.0, 2)
    with pytest.raises(ValueError, match=r"D=0 is not allowed: an integer in \[1, inf\]"):
        g.sample(4, 0)
    with pytest.raises(ValueError, match=r"D=True is not allowed"):
        Sphere(1.0).m(True)
    with pytest.raises(ValueError, match=r"n_points=0 is not allowed"):
        quadrature(g, 2, n_points=0)
    with pytest.raises(ValueError, match="D <= 3"):
        quadrature(Ball(1.0), 4)
