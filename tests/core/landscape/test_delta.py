"""Monte-Carlo Delta_k: identity, fixed insertion order, common random numbers, standard errors, order average."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.core.landscape.delta import delta_curve, loss_differences, loss_variance, order_average_formula, prefix_means
from lib.core.landscape.sampling import Curvature, Gaussian, make_sampler
from lib.core.landscape.subspace import random_basis
from lib.core.tensors import flat_params, n_params
from tests.cases import explicit_losses, seeded_data, seeded_model
from tests.core.conftest import explicit_d

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def tiny_model(seed=0):
    """A 6-8-3 tanh MLP (cases.py has none of this shape)."""
    return seeded_model(lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)), seed)


def data(n=40, seed=1):
    return seeded_data(n, (6,), 3, seed=seed)


# ----------------------------------------------------------------------------------------------- pure helpers
def test_identity_cumulative_sums_equal_direct_differences():
    rng = np.random.default_rng(0)
    l = rng.gamma(2.0, 1.0, size=57)
    d = loss_differences(l)
    np.testing.assert_allclose(d, explicit_d(l), rtol=1e-10, atol=1e-15)
    # torch, float32 input, batched (..., N): float64 output, each row independent
    L = torch.as_tensor(rng.normal(size=(2, 3, 31)), dtype=torch.float32)
    dt = loss_differences(L)
    assert dt.dtype == torch.float64 and dt.shape == (2, 3, 30)
    for i, j in itertools.product(range(2), range(3)):
        np.testing.assert_allclose(dt[i, j].numpy(), explicit_d(L[i, j].double().numpy()), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(prefix_means(l)[-1], l.mean(), rtol=1e-14)
    np.testing.assert_allclose(loss_variance(l), np.mean((l - l.mean()) ** 2), rtol=1e-14)
    with pytest.raises(ValueError, match="N = 2"):
        loss_differences(np.ones(1))


def test_order_average_formula_exact_by_enumeration():
    """E over all N! insertion orders of (L_{k+1} - L_k)^2 = V N / ((N-1) k (k+1)), exactly."""
    rng = np.random.default_rng(1)
    l = rng.normal(size=6)
    perms = np.array(list(itertools.permutations(range(6))))
    avg = (loss_differences(l[perms]) ** 2).mean(axis=0)
    np.testing.assert_allclose(avg, order_average_formula(loss_variance(l), 6), rtol=1e-12)


def test_order_average_formula_random_orders_light_tailed():
    rng = np.random.default_rng(2)
    N, R = 60, 20000
    l = rng.normal(size=N)
    perms = np.argsort(rng.random((R, N)), axis=1)
    sq = loss_differences(l[perms]) ** 2
    mean, se = sq.mean(0), sq.std(0, ddof=1) / math.sqrt(R)
    formula = order_average_formula(loss_variance(l), N)
    assert np.mean(np.abs(mean - formula) < 3.5 * se) >= 0.95


# ----------------------------------------------------------------------------------------------- delta_curve
def test_delta_curve_fixed_order_common_thetas_and_plain_stderr():
    """delta / centred / d0sq / vbar and their SEs equal an explicit per-theta recomputation in the given order."""
    model = tiny_model()
    x, y = data(n=25)
    D, T = 3, 12
    P = random_basis(n_params(model), D, seed=0, dtype=torch.float64)
    sampler = Gaussian(0.5)
    res = delta_curve(model, x, y, P, sampler, T, seed=7, batch_thetas=5, progress=False)
    thetas = sampler.sample(T, D, seed=7)          # the same thetas are used for every k
    w0 = flat_params(model)
    d0 = explicit_d(explicit_losses(model, x, y, w0).numpy())
    ds = np.stack([explicit_d(explicit_losses(model, x, y, w0 + P.T @ th).numpy()) for th in thetas])
    np.testing.assert_allclose(res.d0sq, d0 ** 2, rtol=1e-9, atol=1e-16)
    np.testing.assert_allclose(res.delta, (ds ** 2).mean(0), rtol=1e-9)
    np.testing.assert_allclose(res.stderr, (ds ** 2).std(0, ddof=1) / math.sqrt(T), rtol=1e-7)
    np.testing.assert_allclose(res.centred, ((ds - d0) ** 2).mean(0), rtol=1e-9)
    np.testing.assert_allclose(res.centred_stderr, ((ds - d0) ** 2).std(0, ddof=1) / math.sqrt(T), rtol=1e-7)
    V = [float(np.var(explicit_losses(model, x, y, w0 + P.T @ th).numpy())) for th in thetas]
    assert res.vbar == pytest.approx(np.mean(V), rel=1e-10)
    assert res.vbar_stderr == pytest.approx(np.std(V, ddof=1) / math.sqrt(T), rel=1e-7)
    L = [float(np.mean(explicit_losses(model, x, y, w0 + P.T @ th).numpy())) for th in thetas]
    np.testing.assert_allclose(res.loss_theta, L, rtol=1e-10)      # in draw order, across the batches of 5
    np.testing.assert_allclose(res.k, np.arange(1, 25))
    assert res.n_forward == T + 1 and res.n_samples == T and res.n_units == T and res.N == 25 and res.D == D
    assert res.order_mean is None
    assert res.seconds > 0


def test_delta_curve_at_tiny_sigma_is_theta_zero_in_given_order():
    """Insertion order is the given order for every theta (the original reshuffled per call)."""
    model = tiny_model(1)
    x, y = data(n=30, seed=3)
    P = random_basis(n_params(model), 2, seed=1, dtype=torch.float64)
    res = delta_curve(model, x, y, P, Gaussian(1e-9), 4, progress=False)
    with torch.no_grad():
        l = F.cross_entropy(model(x), y, reduction="none").numpy()
    direct = explicit_d(l) ** 2
    np.testing.assert_allclose(res.delta, direct, rtol=1e-6, atol=1e-18)
    np.testing.assert_allclose(res.d0sq, direct, rtol=1e-9, atol=1e-18)
    shuffled = explicit_d(l[np.random.default_rng(0).permutation(30)]) ** 2
    assert not np.allclose(res.delta, shuffled, rtol=1e-3)


def test_all_D_directions_enter_the_curve():
    model = tiny_model(2)
    x, y = data(n=30, seed=4)
    P = random_basis(n_params(model), 4, seed=2, dtype=torch.float64)
    full = delta_curve(model, x, y, P, Gaussian(0.5), 16, seed=0, progress=False)
    first = delta_curve(model, x, y, P[:1], Gaussian(0.5), 16, seed=0, progress=False)
    rest = delta_curve(model, x, y, P[1:], Gaussian(0.5), 16, seed=0, progress=False)
    assert np.max(np.abs(full.centred - first.centred) / first.centred) > 0.1
    assert np.all(rest.centred > 0) and np.max(rest.centred) > 1e-6


def test_antithetic_and_sobol_standard_errors_use_independent_units():
    model = tiny_model(3)
    x, y = data(n=20, seed=5)
    D, T = 2, 16
    P = random_basis(n_params(model), D, seed=3, dtype=torch.float64)
    w0 = flat_params(model)
    sampler = make_sampler("ball", sigma=0.4)
    for est, R in (("antithetic", None), ("sobol", 4)):
        kw = {"n_replicates": R} if R else {}
        # batch_thetas=3: pairs and Sobol blocks straddle the post-processing batches
        res = delta_curve(model, x, y, P, sampler, T, estimator=est, seed=1, batch_thetas=3, progress=False, **kw)
        th = sampler.sample(T, D, estimator=est, seed=1, **kw)
        sq = np.stack([explicit_d(explicit_losses(model, x, y, w0 + P.T @ t).numpy()) ** 2 for t in th])
        unit = 2 if est == "antithetic" else T // R
        units = sq.reshape(-1, unit, sq.shape[1]).mean(1)
        np.testing.assert_allclose(res.delta, sq.mean(0), rtol=1e-9)
        np.testing.assert_allclose(res.stderr, units.std(0, ddof=1) / math.sqrt(len(units)), rtol=1e-7)
        assert res.n_units == len(units)


def test_order_average_matches_vbar_formula_on_light_tailed_losses():
    """Average over R random insertion orders (same forward passes) vs V-bar N / ((N-1) k (k+1))."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3).double()            # light-tailed per-sample losses
    x, y = data(n=40, seed=6)
    P = random_basis(n_params(model), 3, seed=4, dtype=torch.float64)
    R = 1000
    res = delta_curve(model, x, y, P, Gaussian(0.3), 8, n_orders=R, order_seed=5, progress=False)
    assert res.order_mean.shape == res.order_formula.shape == res.order_median.shape == (39,)
    inside = np.abs(res.order_mean - res.order_formula) < 3.5 * res.order_stderr
    assert inside.mean() >= 0.95
    np.testing.assert_allclose(res.order_formula, order_average_formula(res.vbar, 40), rtol=1e-14)
    # k (k+1) * order average is flat around vbar N / (N-1)
    flat = res.order_mean * res.k * (res.k + 1)
    assert np.median(flat) == pytest.approx(res.vbar * 40 / 39, rel=0.1)
    assert res.n_forward == 9                  # the orders cost no forward passes


def test_bad_parameters_raise_value_errors():
    model = tiny_model()
    x, y = data(n=10)
    n = n_params(model)
    P = random_basis(n, 2, seed=0, dtype=torch.float64)
    g = Gaussian(0.1)
    with pytest.raises(ValueError, match=r"n_samples=1 is not allowed: an integer in \[2, inf\]"):
        delta_curve(model, x, y, P, g, 1, progress=False)
    with pytest.raises(ValueError, match="estimator='mc' is not allowed: one of"):
        delta_curve(model, x, y, P, g, 4, estimator="mc", progress=False)
    with pytest.raises(ValueError, match="antithetic estimator needs an even n_samples"):
        delta_curve(model, x, y, P, g, 5, estimator="antithetic", progress=False)
    with pytest.raises(ValueError, match="multiple of n_replicates=8"):
        delta_curve(model, x, y, P, g, 12, estimator="sobol", progress=False)
    with pytest.raises(ValueError, match=f"basis width {n - 1} != n_params {n}"):
        delta_curve(model, x, y, P[:, :-1], g, 4, progress=False)
    with pytest.raises(ValueError, match="D=2 does not match the curvature sampler's 3 eigenvalues"):
        delta_curve(model, x, y, P, Curvature(0.1, [1.0, 2.0, 3.0]), 4, progress=False)
    with pytest.raises(ValueError, match=r"n_orders=-1 is not allowed: an integer in \[0, inf\]"):
        delta_curve(model, x, y, P, g, 4, n_orders=-1, progress=False)
    with pytest.raises(ValueError, match=r"batch_thetas=0 is not allowed: an integer in \[1, inf\]"):
        delta_curve(model, x, y, P, g, 4, batch_thetas=0, progress=False)
    with pytest.raises(ValueError, match=r"n_replicates=1 is not allowed: an integer in \[2, inf\]"):
        delta_curve(model, x, y, P, g, 8, estimator="sobol", n_replicates=1, progress=False)
    with pytest.raises(ValueError, match=r"sampler must be a lib\.core\.landscape\.sampling\.Sampler"):
        delta_curve(model, x, y, P, 0.1, 4, progress=False)
    with pytest.raises(ValueError, match="at least 2 samples"):
        delta_curve(model, x[:1], y[:1], P, g, 4, progress=False)
    with pytest.raises(ValueError, match="same length, got 10 and 9"):
        delta_curve(model, x, y[:-1], P, g, 4, progress=False)


def test_order_curves_and_batch_means_are_consistent():
    """The per-order curves average to order_mean, and the batch means average (weighted by batch size) to delta."""
    model = seeded_model(lambda: torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)))
    x, y = seeded_data(40, (6,), 3)
    P = random_basis(sum(p.numel() for p in model.parameters()), 3, seed=0, dtype=torch.float64)
    c = delta_curve(model, x, y, P, make_sampler("gaussian", sigma=0.5), 12, n_orders=5, n_batches=4, progress=False)
    assert c.order_curves.shape == (5, 39) and c.batch_means.shape == (4, 39)
    np.testing.assert_allclose(c.order_curves.mean(0), c.order_mean, rtol=1e-12)
    np.testing.assert_allclose(c.batch_means.mean(0), c.delta, rtol=1e-12)          # 4 batches of 3 thetas
    c2 = delta_curve(model, x, y, P, make_sampler("gaussian", sigma=0.5), 10, n_batches=4, progress=False)
    sizes = np.array([3, 2, 3, 2])                                                  # unit u -> batch u*4//10
    np.testing.assert_allclose((c2.batch_means * sizes[:, None]).sum(0) / 10, c2.delta, rtol=1e-12)


@pytest.mark.parametrize("name", ["mlp2", "cnn"])
def test_delta_curve_on_the_batched_paths_equals_the_generic_forward(name, monkeypatch):
    """The study networks' Monte-Carlo curves from the batched loss paths (MLP first layer precomputed, CNN
    conv-pool stages stacked over thetas) equal those from one plain forward pass per theta."""
    import functools

    from lib.core.landscape import delta as mc
    from lib.core.landscape.subspace import SubspaceLosses
    from lib.core.training import models
    net = models.build(name, 0, dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (60,), generator=g)
    P = random_basis(n_params(net), 3, seed=2, dtype=torch.float64)
    kw = dict(n_samples=20, seed=3, n_orders=2, batch_thetas=8, progress=False)
    fast = delta_curve(net, x, y, P, Gaussian(0.3), **kw)
    monkeypatch.setattr(mc, "SubspaceLosses", functools.partial(SubspaceLosses, shortcut=False))
    slow = delta_curve(net, x, y, P, Gaussian(0.3), **kw)
    for field in ("delta", "stderr", "centred", "order_mean", "losses0"):
        np.testing.assert_allclose(getattr(fast, field), getattr(slow, field), rtol=1e-9, atol=1e-15)
    assert fast.vbar == pytest.approx(slow.vbar, rel=1e-10) and fast.n_forward == slow.n_forward == 21
