"""The full-space isotropic criterion (``delta.full_space_curve``) and the pointwise criterion E|L_{k+1} - L_k|:
against explicit perturbed forward passes in float64, against closed forms of linear models (squared loss: the exact
second moment of a quadratic; identity loss: a Gaussian increment with a folded-normal mean), Jensen's inequality
per k, the scale that matches the subspace's expected perturbation norm, and bad parameters."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from lib.core.landscape.delta import (
    delta_curve,
    full_space_curve,
    full_space_curves,
    full_space_perturbations,
    full_space_scale,
)
from lib.core.landscape.sampling import make_sampler
from lib.core.landscape.subspace import random_basis
from lib.core.tensors import flat_params, n_params
from tests.cases import seeded_data, seeded_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def tiny_model(seed=0):
    return seeded_model(lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)), seed)


def explicit_d(losses):
    """L_{k+1} - L_k with explicit loops over k (no cumulative sums)."""
    N = len(losses)
    return np.array([sum(losses[:k + 1]) / (k + 1) - sum(losses[:k]) / k for k in range(1, N)])


def perturbed_losses(model, x, y, eps, loss=None):
    """Per-sample losses of a deep copy of ``model`` whose weights are w* + eps (a plain forward pass)."""
    net = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(flat_params(model) + eps, net.parameters())
    with torch.no_grad():
        out = net(x)
    return (F.cross_entropy(out, y, reduction="none") if loss is None else loss(out, y)).numpy()


def unit_stats(values, unit):
    """Mean and standard error over i.i.d. units of ``unit`` consecutive rows."""
    u = values.reshape(-1, unit, *values.shape[1:]).mean(1)
    return u.mean(0), u.std(0, ddof=1) / math.sqrt(len(u))


@pytest.mark.parametrize("estimator", ["plain", "antithetic"])
def test_full_space_curve_equals_explicit_perturbed_forward_passes(estimator):
    model = tiny_model()
    x, y = seeded_data(25, (6,), 3, seed=3)
    n, T, s = n_params(model), 8, 0.2
    c = full_space_curve(model, x, y, s, T, estimator=estimator, seed=5, batch_thetas=3, progress=False, n_orders=2)
    eps = full_space_perturbations(n, range(T), s, seed=5, estimator=estimator)
    L = np.array([perturbed_losses(model, x, y, e) for e in eps])                       # (T, N)
    d = np.array([explicit_d(row) for row in L])
    d0 = explicit_d(perturbed_losses(model, x, y, torch.zeros(n, dtype=torch.float64)))
    unit = 1 if estimator == "plain" else 2
    for got, got_se, values in ((c.delta, c.stderr, d ** 2), (c.centred, c.centred_stderr, (d - d0) ** 2),
                                (c.abs_mean, c.abs_stderr, np.abs(d))):
        mean, se = unit_stats(values, unit)
        np.testing.assert_allclose(got, mean, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(got_se, se, rtol=1e-7, atol=1e-15)
    v_mean, v_se = unit_stats(L.var(axis=1), unit)
    np.testing.assert_allclose([c.vbar, c.vbar_stderr], [v_mean, v_se], rtol=1e-9)
    np.testing.assert_allclose(c.d0sq, d0 ** 2, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(c.abs0, np.abs(d0), rtol=1e-9, atol=1e-15)
    assert (c.D, c.N, c.n_samples, c.n_forward, c.n_units) == (n, 25, T, T + 1, T // unit)
    assert c.meta["scale"] == s and c.estimator == estimator
    # the same perturbations whatever the block size; antithetic rows come in pairs (eps, -eps)
    again = full_space_curve(model, x, y, s, T, estimator=estimator, seed=5, batch_thetas=16, progress=False)
    np.testing.assert_allclose(again.delta, c.delta, rtol=1e-12)
    np.testing.assert_allclose(full_space_perturbations(n, range(3, 6), s, 5, estimator), eps[3:6], rtol=0)
    if estimator == "antithetic":
        np.testing.assert_allclose(eps[1::2], -eps[0::2], rtol=0)
    else:
        assert not torch.allclose(eps[0], eps[1])


@pytest.mark.parametrize("estimator", ["plain", "antithetic"])
def test_full_space_curves_share_draws_and_equal_explicit_passes_at_every_scale(estimator):
    """Several scales in one pass (a ReLU MLP: the batched path with the first layer combined per scale, and a tanh
    MLP: the shortcut path): each curve equals explicit forward passes at w* + s z_t, z_t the unit draws."""
    for hidden in (nn.ReLU, nn.Tanh):
        model = seeded_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 8), hidden(), nn.Linear(8, 7),
                                                   hidden(), nn.Linear(7, 3)), 2)
        x, y = seeded_data(21, (6,), 3, seed=6)
        n, T, scales = n_params(model), 6, [0.3, 0.05, 0.12]
        curves = full_space_curves(model, x, y, scales, T, estimator=estimator, seed=4, batch_thetas=4,
                                   progress=False, n_orders=2)
        z = full_space_perturbations(n, range(T), 1.0, seed=4, estimator=estimator)
        unit = 1 if estimator == "plain" else 2
        for s, c in zip(scales, curves):
            d = np.array([explicit_d(perturbed_losses(model, x, y, s * e)) for e in z])
            mean, se = unit_stats(d ** 2, unit)
            np.testing.assert_allclose(c.delta, mean, rtol=1e-9, atol=1e-15)
            np.testing.assert_allclose(c.stderr, se, rtol=1e-7, atol=1e-15)
            np.testing.assert_allclose(c.abs_mean, unit_stats(np.abs(d), unit)[0], rtol=1e-9, atol=1e-15)
            assert c.meta["scale"] == s and c.meta["scales_together"] == 3 and c.n_forward == T + 1
            alone = full_space_curve(model, x, y, s, T, estimator=estimator, seed=4, progress=False, n_orders=2)
            np.testing.assert_allclose(alone.delta, c.delta, rtol=1e-10)
            np.testing.assert_allclose(alone.order_curves, c.order_curves, rtol=1e-10)
        assert not np.allclose(curves[0].delta, curves[1].delta)
    with pytest.raises(ValueError, match="scales"):
        full_space_curves(model, x, y, [], T, progress=False)


def test_full_space_perturbations_have_the_requested_scale_and_norm():
    n, s = 40000, 0.03
    eps = full_space_perturbations(n, range(4), s, seed=1)
    assert eps.shape == (4, n) and eps.dtype == torch.float64
    np.testing.assert_allclose(eps.std(dim=1).numpy(), s, rtol=0.02)
    # s = sigma sqrt(D / n): E||eps||^2 = n s^2 = sigma^2 D = E||P^T theta||^2
    sigma, D = 0.7, 10
    s_norm = full_space_scale(sigma, D, n)
    assert n * s_norm ** 2 == pytest.approx(sigma ** 2 * D, rel=1e-12)
    assert full_space_scale(sigma, D, n, "coordinate") == sigma
    sq = (full_space_perturbations(n, range(8), s_norm, seed=2) ** 2).sum(1).numpy()
    np.testing.assert_allclose(sq.mean(), sigma ** 2 * D, rtol=0.02)


def _linear_data(N=30, p=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, p, generator=g, dtype=torch.float64)
    y = torch.randn(N, generator=g, dtype=torch.float64)
    model = seeded_model(lambda: nn.Linear(p, 1), seed)
    u = np.hstack([x.numpy(), np.ones((N, 1))])          # d l_i / d w for w = (W, b): the parameters_to_vector order
    r = u @ flat_params(model).numpy() - y.numpy()       # residuals at w*
    return model, x, y, u, r


def test_full_space_curve_matches_the_exact_second_moment_of_a_linear_model_with_squared_loss():
    """l_i(w* + eps) = r_i^2/2 + r_i u_i.eps + (u_i.eps)^2/2 exactly, so with da, db, dC the increments of
    (r^2/2, r u, u u^T): Delta_k = da^2 + s^2 |db|^2 + s^2 da tr dC + s^4 (2 tr dC^2 + (tr dC)^2)/4 exactly."""
    model, x, y, u, r = _linear_data()
    N, s, T = len(y), 0.3, 3000
    a, b, C = 0.5 * r ** 2, r[:, None] * u, u[:, :, None] * u[:, None, :]
    exact = np.empty(N - 1)
    for k in range(1, N):
        da = (a[k] - a[:k].mean()) / (k + 1)
        db = (b[k] - b[:k].mean(0)) / (k + 1)
        dC = (C[k] - C[:k].mean(0)) / (k + 1)
        tr = np.trace(dC)
        exact[k - 1] = da ** 2 + s ** 2 * db @ db + s ** 2 * da * tr + s ** 4 / 4 * (2 * np.sum(dC * dC) + tr ** 2)
    c = full_space_curve(model, x, y, s, T, seed=0, progress=False,
                         loss_fn=lambda out, t: 0.5 * (out[:, 0] - t) ** 2)
    z = (c.delta - exact) / c.stderr
    assert np.mean(np.abs(z) < 3) >= 0.95 and np.max(np.abs(z)) < 4.5, z
    assert np.median(np.abs(c.delta / exact - 1)) < 0.05
    np.testing.assert_allclose(c.d0sq, [((a[k] - a[:k].mean()) / (k + 1)) ** 2 for k in range(1, N)], rtol=1e-9)


def test_pointwise_criterion_exact_for_gaussian_increments_and_below_root_delta():
    """Identity loss l_i(w) = u_i.w - y_i: d_k(w* + eps) ~ N(m_k, v_k) with m_k = d_k(0), v_k = s^2 |du_k|^2, so
    E d_k^2 = m^2 + v and E|d_k| = sqrt(2v/pi) exp(-m^2/2v) + m (1 - 2 Phi(-m/sqrt v)) < sqrt(m^2 + v) (Jensen)."""
    model, x, y, u, r = _linear_data(N=24, seed=3)
    N, s, T = len(y), 0.5, 3000
    m = np.array([(r[k] - r[:k].mean()) / (k + 1) for k in range(1, N)])
    v = np.array([s ** 2 * np.sum(((u[k] - u[:k].mean(0)) / (k + 1)) ** 2) for k in range(1, N)])
    second = m ** 2 + v
    first = np.sqrt(2 * v / np.pi) * np.exp(-m ** 2 / (2 * v)) + m * (1 - 2 * norm.cdf(-m / np.sqrt(v)))
    assert np.all(first < np.sqrt(second))                      # strict Jensen: d_k is not constant
    c = full_space_curve(model, x, y, s, T, seed=1, progress=False, loss_fn=lambda out, t: out[:, 0] - t)
    for got, se, want in ((c.delta, c.stderr, second), (c.abs_mean, c.abs_stderr, first)):
        z = (got - want) / se
        assert np.mean(np.abs(z) < 3) >= 0.95 and np.max(np.abs(z)) < 4.5, z
    np.testing.assert_allclose(c.abs0, np.abs(m), rtol=1e-9)
    # Jensen on the sample means themselves: mean |d| <= sqrt(mean d^2) for every k (Cauchy-Schwarz)
    assert np.all(c.abs_mean <= np.sqrt(c.delta) * (1 + 1e-12))
    # zero-mean increments: E|d| / sqrt(E d^2) = sqrt(2/pi) exactly; here at the k where |m_k| << sqrt(v_k)
    small = np.abs(m) < 0.05 * np.sqrt(v)
    if small.any():
        np.testing.assert_allclose(first[small] / np.sqrt(second[small]), math.sqrt(2 / math.pi), rtol=2e-3)


def test_subspace_curve_has_the_pointwise_criterion_from_the_same_passes():
    model = tiny_model(1)
    x, y = seeded_data(20, (6,), 3, seed=4)
    basis = random_basis(n_params(model), 3, seed=0, dtype=torch.float64)
    sampler = make_sampler("gaussian", sigma=0.5)
    c = delta_curve(model, x, y, basis, sampler, 6, seed=2, progress=False)
    thetas = sampler.sample(6, 3, seed=2)
    d = np.array([explicit_d(perturbed_losses(model, x, y, th @ basis)) for th in thetas])
    np.testing.assert_allclose(c.abs_mean, np.abs(d).mean(0), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(c.abs_stderr, np.abs(d).std(0, ddof=1) / math.sqrt(6), rtol=1e-7, atol=1e-15)
    assert np.all(c.abs_mean <= np.sqrt(c.delta) * (1 + 1e-12))
    assert c.n_forward == 7            # no second pass: theta = 0 and the 6 thetas


def test_full_space_bad_parameters_name_the_parameter():
    model = tiny_model()
    x, y = seeded_data(10, (6,), 3)
    for kw, word in (({"scale": 0.0}, "scale"), ({"n_samples": 1}, "n_samples"),
                     ({"estimator": "sobol"}, "estimator"), ({"estimator": "antithetic", "n_samples": 5}, "antithetic"),
                     ({"batch_thetas": 0}, "batch_thetas")):
        args = {"scale": 0.1, "n_samples": 4, **kw}
        with pytest.raises(ValueError, match=word):
            full_space_curve(model, x, y, progress=False, **args)
    with pytest.raises(ValueError, match="scale"):
        full_space_scale(1.0, 2, 100, "per-layer")
    with pytest.raises(ValueError, match="sigma"):
        full_space_scale(-1.0, 2, 100)
